"""Concurrent writers and readers: two `docqa ingest` at once, and searches during an ingest.

Scenarios, each on a fresh store and checked against a clean ingest of the same corpus:

- same files: two `docqa ingest CORPUS` started together. Both must exit 0, the later one saying it
  waits for the other; each file is ingested by exactly one of them (the other finds it unchanged).
- different files: one ingests the PDFs, the other the text and markdown files, at the same time.
- readers: while an ingest fills an empty store, new `docqa search --json` and `docqa ask --no-llm --json`
  processes run one after another, and one long-lived reader (like `docqa chat`) searches every 0.2 s.
  Every reader must succeed every time and never return a chunk of a file not yet committed; once the
  ingest is over, the long-lived reader must see every committed chunk (not a stale vector index).

After each scenario the store must hold every file's chunks exactly once, with catalog, lexical index and
Chroma in step (benchmarks/_reliability.inspect_store).

    python benchmarks/concurrency_test.py             # 3 rounds, real `docqa` subprocesses
    python benchmarks/concurrency_test.py --quick     # 1 round, forked runs (what CI runs)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._reliability import (  # noqa: E402
    COLLECTION,
    Corpus,
    Run,
    _fork,
    build_corpus,
    committed_chunks,
    finish,
    in_child,
    inspect_store,
    parse_args,
    read_catalog,
    start,
)

RUN_TIMEOUT = 1800.0
WAITING = "another process is writing to this store"


def ingest(paths: list[Path], store: Path) -> list[str]:
    return ["ingest", *map(str, paths), "--store", str(store), "-q", "--json", "--batch-size", "4"]


def committed_sources(store: Path) -> set[str]:
    db = read_catalog(store)
    if db is None:
        return set()
    try:
        return {row[0] for row in db.execute("SELECT source FROM documents")}
    except sqlite3.Error:
        return set()
    finally:
        db.close()


def files_of(paths: list[Path], corpus: Corpus) -> set[str]:
    """The corpus files (sources) that these paths name, directories expanded."""
    named = {str(p.resolve()) for p in paths}
    return {s for s in corpus.words if s in named or str(Path(s).parent) in named}


def report_of(run: Run) -> dict[str, Any]:
    try:
        return json.loads(run.output())
    except ValueError:
        return {}


def two_writers(name: str, first: list[Path], second: list[Path], corpus: Corpus, reference: dict[str, Any],
                work: Path, launcher: str, rng: random.Random) -> dict[str, Any]:
    store = work / name
    delay = rng.uniform(0.0, 1.0)
    a = Run(ingest(first, store), launcher, work / "logs" / f"{name}-a.log")
    time.sleep(delay)
    b = Run(ingest(second, store), launcher, work / "logs" / f"{name}-b.log")
    problems = []
    codes = [a.wait(timeout=RUN_TIMEOUT), b.wait(timeout=RUN_TIMEOUT)]
    if codes != [0, 0]:
        problems.append(f"exit codes {codes}: {a.errors()[-300:]} {b.errors()[-300:]}")
    reports = [report_of(a), report_of(b)]
    ingested = sum(r.get("files_ingested", 0) for r in reports)
    unchanged = sum(r.get("files_unchanged", 0) for r in reports)
    overlap = len(files_of(first, corpus) & files_of(second, corpus))
    if ingested != len(corpus.words) or unchanged != overlap:
        problems.append(f"{ingested} files ingested and {unchanged} unchanged in all; want "
                        f"{len(corpus.words)} and {overlap}")
    waited = [WAITING in run.errors() for run in (a, b)]
    check = in_child(inspect_store, str(store), corpus.words, [reference], True)
    problems += check["problems"]
    return {"scenario": name, "start_delay_s": round(delay, 2), "exit_codes": codes, "waited": waited,
            "problems": problems, "lost": check["lost"], "duplicated": check["duplicated"],
            "chunks": check["chunks"]}


def long_lived_reader(store: str, words: dict[str, str], done_flag: str) -> dict[str, Any]:
    """Search every 0.2 s with one store object until done_flag exists (runs in a child)."""
    from docqa.archive.store import ArchivalStore
    from docqa.embeddings.load import load_embedder
    from docqa.settings import Settings

    searches = 0
    errors: list[str] = []
    pending_hits: list[str] = []
    store_obj = None
    rng = random.Random(0)
    finished = False
    while not finished:
        finished = Path(done_flag).exists()
        try:
            if store_obj is None:
                store_obj = ArchivalStore(Settings(store_dir=Path(store), collection=COLLECTION),
                                          embedder=load_embedder())
            word = rng.choice(sorted(words.values()))
            page = store_obj.search(f"{word} history of the region", mode=rng.choice(["hybrid", "dense"]),
                                    page_size=50)
            searches += 1
            after = committed_sources(Path(store))
            pending_hits += [hit.record.id for hit in page.hits if hit.record.source not in after]
        except Exception as exc:  # every failure is a finding
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        time.sleep(0.2)
    current = sum(len(v) for v in committed_chunks(Path(store)).values())
    seen = len(store_obj.ranking("history of the region", "dense")) if store_obj else 0
    return {"searches": searches, "errors": errors, "pending_hits": pending_hits, "dense_sees": seen,
            "committed": current}


def readers_during_ingest(corpus: Corpus, reference: dict[str, Any], work: Path, launcher: str,
                          rng: random.Random, name: str) -> dict[str, Any]:
    store = work / name
    done_flag = work / f"{name}.done"
    result_path = work / f"{name}-reader.json"

    def reader() -> int:
        result_path.write_text(json.dumps(long_lived_reader(str(store), corpus.words, str(done_flag))))
        return 0

    with open(work / "logs" / f"{name}-reader.log", "wb") as log:
        reader_pid = _fork(reader, log.fileno())
    writer = Run(ingest([corpus.directory], store), launcher, work / "logs" / f"{name}-writer.log")
    problems: list[str] = []
    short_reads = 0
    while writer.poll() is None:
        source, word = rng.choice(sorted(corpus.words.items()))
        command = (["search", word, "--json", "--page-size", "50"] if rng.random() < 0.7
                   else ["ask", f"What is catalogue number {word}?", "--no-llm", "--json"])
        run = Run([*command, "--store", str(store)], launcher, work / "logs" / f"{name}-read{short_reads}.log")
        code = run.wait(timeout=RUN_TIMEOUT)
        short_reads += 1
        after = committed_sources(store)
        try:
            payload = json.loads(run.output())
        except ValueError:
            problems.append(f"docqa {command[0]} printed no JSON (exit {code}): {run.errors()[-300:]}")
            continue
        if code != 0:
            problems.append(f"docqa {command[0]} exited {code}: {run.errors()[-300:]}")
        hits = payload.get("results") or payload.get("citations") or []
        pending = [hit["source"] for hit in hits if hit["source"] not in after]
        if pending:
            problems.append(f"docqa {command[0]} returned chunks of uncommitted files: {sorted(set(pending))}")
    if writer.returncode != 0:
        problems.append(f"ingest exited {writer.returncode}: {writer.errors()[-300:]}")
    done_flag.touch()
    _, status = os.waitpid(reader_pid, 0)
    reader = json.loads(result_path.read_text()) if result_path.exists() else {}
    if os.waitstatus_to_exitcode(status) != 0 or not reader:
        problems.append("the long-lived reader crashed (see its log)")
    else:
        problems += [f"long-lived reader: {e}" for e in reader["errors"]]
        if reader["pending_hits"]:
            problems.append(f"long-lived reader saw {len(reader['pending_hits'])} uncommitted chunks")
        if reader["dense_sees"] != reader["committed"]:
            problems.append(f"long-lived reader's dense search sees {reader['dense_sees']} of "
                            f"{reader['committed']} committed chunks after the ingest")
    check = in_child(inspect_store, str(store), corpus.words, [reference], True)
    problems += check["problems"]
    return {"scenario": name, "short_lived_reads": short_reads, "long_lived_searches": reader.get("searches", 0),
            "problems": problems, "lost": check["lost"], "duplicated": check["duplicated"],
            "chunks": check["chunks"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.split("\n\n")[0], "1 round on a small corpus, forked runs (CI)",
                      ("--rounds", "rounds of all scenarios (default 3, or 1 with --quick)"))
    rounds = args.rounds or (1 if args.quick else 3)
    launcher, work, started = start(args, "docqa-concurrency-")
    outcomes: list[dict[str, Any]] = []
    try:
        corpus = build_corpus(work / "corpus", args.quick)
        ref = Run(ingest([corpus.directory], work / "reference"), launcher, work / "logs" / "reference.log")
        if ref.wait(timeout=RUN_TIMEOUT) != 0:
            raise SystemExit(f"reference ingest failed: {ref.errors()[-2000:]}")
        reference = {s: [list(p) for p in pairs] for s, pairs in committed_chunks(work / "reference").items()}
        pdfs = [f for f in corpus.files if f.suffix == ".pdf"]
        others = [f for f in corpus.files if f.suffix != ".pdf"]
        for n in range(rounds):
            rng = random.Random(f"{args.seed}:{n}")
            for outcome in (
                two_writers(f"same-{n}", [corpus.directory], [corpus.directory], corpus, reference, work,
                            launcher, rng),
                two_writers(f"different-{n}", pdfs, others, corpus, reference, work, launcher, rng),
                readers_during_ingest(corpus, reference, work, launcher, rng, f"readers-{n}"),
            ):
                outcomes.append(outcome)
                status = "ok" if not outcome["problems"] else "FAILED: " + "; ".join(outcome["problems"])
                extra = {k: v for k, v in outcome.items() if k in ("waited", "short_lived_reads",
                                                                   "long_lived_searches")}
                print(f"{outcome['scenario']}: {extra} -> {status}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    failures = [{"scenario": o["scenario"], "problems": o["problems"]} for o in outcomes if o["problems"]]
    readers = [o for o in outcomes if o["scenario"].startswith("readers")]
    writers = [o for o in outcomes if not o["scenario"].startswith("readers")]
    payload = {
        "what": "two `docqa ingest` at once on one store (same and different files); readers during an ingest",
        "launcher": launcher,
        "seed": args.seed,
        "trials": len(outcomes),
        "writer_pairs": len(writers),
        "writer_pairs_where_one_waited": sum(any(o["waited"]) for o in writers),
        "short_lived_reads": sum(o["short_lived_reads"] for o in readers),
        "long_lived_searches": sum(o["long_lived_searches"] for o in readers),
        "faults_survived": sum(2 for o in writers if not o["problems"])
        + sum(o["short_lived_reads"] + o["long_lived_searches"] for o in readers if not o["problems"]),
        "chunks_checked": sum(o["chunks"] for o in outcomes),
        "chunks_lost": sum(o["lost"] for o in outcomes),
        "chunks_duplicated": sum(o["duplicated"] for o in outcomes),
        "failures": failures,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"{len(outcomes)} scenarios, {payload['short_lived_reads']} reader processes and "
          f"{payload['long_lived_searches']} long-lived searches during ingests, lost {payload['chunks_lost']}, "
          f"duplicated {payload['chunks_duplicated']}, {len(failures)} failed; {payload['seconds']} s", flush=True)
    return finish("concurrency", payload, args)


if __name__ == "__main__":
    sys.exit(main())
