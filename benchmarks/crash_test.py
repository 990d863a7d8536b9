"""Crash mid-ingest: SIGKILL `docqa ingest` at random moments, re-run it, check nothing is lost or doubled.

Each trial (seeded) starts from an empty store, from an empty store whose Chroma saves its vector index
every 8 vectors (so kills land while the index is being written to disk), or from a store holding older
versions of the files (so kills land while documents are being replaced). It runs `docqa ingest` on the
corpus and SIGKILLs it 1-3 times, each at a random moment: a random time after the start, or once the
store holds a random number of the expected chunk rows plus a random delay. After each kill the store is
checked as it stands (every committed file complete, nothing untracked; if the kill hit Chroma while it
was saving its index, the index cannot be loaded and the re-run must rebuild it from the catalog, which
is counted, not failed); then the ingest is re-run to
completion and the store checked against a clean ingest of the same corpus: every file's chunks present
exactly once, the catalog, its lexical index and Chroma's vector index holding the same chunk ids, and
search (in a new process) finding every file by the one word only it contains.

    python benchmarks/crash_test.py                 # 24 trials, real `docqa` subprocesses
    python benchmarks/crash_test.py --quick         # 3 trials, forked runs (what CI runs)

Results go to benchmarks/results/reliability.json (section "crash"); exit code 1 if any trial failed.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._reliability import (  # noqa: E402
    COLLECTION,
    Corpus,
    Run,
    build_corpus,
    committed_chunks,
    finish,
    in_child,
    inspect_store,
    parse_args,
    progress,
    rng_for,
    search_output_problem,
    start,
)

RUN_TIMEOUT = 1800.0


def ingest_args(corpus: Corpus, store: Path) -> list[str]:
    # Small batches: several store writes per file, so kills land between the batches of a file too.
    return ["ingest", str(corpus.directory), "--store", str(store), "-q", "--batch-size", "4"]


def make_stress_collection(store: str) -> bool:
    """Create the store's collection with Chroma saving its index every 8 vectors (runs in a child)."""
    from docqa.archive.chroma import local_client
    from docqa.settings import Settings

    client = local_client(Settings(store_dir=Path(store)).store_dir)
    client.create_collection(COLLECTION, embedding_function=None,
                             metadata={"hnsw:space": "cosine", "hnsw:sync_threshold": 8, "hnsw:batch_size": 4})
    return True


def inspect(store: Path, corpus: Corpus, references: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    try:
        return in_child(inspect_store, str(store), corpus.words, references, final)
    except (RuntimeError, TimeoutError) as exc:
        return {"problems": [f"the store check itself failed: {str(exc)[-400:]}"], "lost": 0, "duplicated": 0,
                "chunks": 0, "found": 0, "vectors_unreadable": False}


def search_finds(word: str, source: str, store: Path, launcher: str, log: Path) -> str | None:
    """Run `docqa search WORD --json` as a new process; return what is wrong, if anything."""
    return search_output_problem(Run(["search", word, "--store", str(store), "--json"], launcher, log), word, source)


def run_trial(trial: int, seed: int, corpus: Corpus, references: list[dict[str, Any]], work: Path,
              launcher: str, t_reference: float, old_store: Path | None) -> dict[str, Any]:
    """One trial: kill `docqa ingest` 1-3 times, check the store after each kill, re-run, check again."""
    reference = references[0]
    rng = rng_for(seed, trial)
    store = work / f"trial-{trial:02d}"
    logs = work / "logs"
    start = rng.choice(["empty", "empty-stress", "update"] if old_store else ["empty", "empty-stress"])
    if start == "update":
        shutil.copytree(old_store, store)
    elif start == "empty-stress":
        in_child(make_stress_collection, str(store))
    generations = {chunk_id.split(":")[0] for pairs in reference.values() for chunk_id, _ in pairs}
    expected_rows = sum(len(pairs) for pairs in reference.values())
    outcome: dict[str, Any] = {"trial": trial, "start": start, "kills": [], "problems": []}
    for k in range(rng.choice([1, 1, 2, 3])):
        how = rng.choice(["time", "rows", "rows"])
        run = Run(ingest_args(corpus, store), launcher, logs / f"trial{trial:02d}-run{k}.log")
        if how == "time":
            at = rng.uniform(0.0, t_reference)
            while run.poll() is None and run.seconds < at:
                time.sleep(0.005)
        else:
            target = rng.randint(min(progress(store, generations)[0] + 1, expected_rows), expected_rows)
            while run.poll() is None and progress(store, generations)[0] < target and run.seconds < RUN_TIMEOUT:
                time.sleep(0.005)
            at = run.seconds + rng.uniform(0.0, 0.5)
            while run.poll() is None and run.seconds < at:
                time.sleep(0.005)
        rows, documents = progress(store, generations)
        landed = run.kill()
        kill = {"how": how, "at_s": round(run.seconds, 2), "landed": landed, "rows_written": rows,
                "documents_committed": documents}
        if not landed and run.returncode != 0:
            outcome["problems"].append(f"run {k} finished before its kill with exit {run.returncode}")
        check = inspect(store, corpus, references, final=False)
        kill["damaged_chroma"] = check["vectors_unreadable"]
        if not check["vectors_unreadable"]:  # a damaged index is the re-run's to rebuild; judged after it
            kill["problems"] = check["problems"]
            outcome["problems"] += [f"after kill {k}: {p}" for p in check["problems"]]
        outcome["kills"].append(kill)
        if not landed:
            break  # the run finished: later kills would only hit runs with nothing left to do
    final = Run(ingest_args(corpus, store), launcher, logs / f"trial{trial:02d}-final.log")
    if final.wait(timeout=RUN_TIMEOUT) != 0:
        outcome["problems"].append(f"re-run exited {final.returncode}: {final.errors()[-500:]}")
    check = inspect(store, corpus, references, final=True)
    outcome["problems"] += check["problems"]
    outcome.update(lost=check["lost"], duplicated=check["duplicated"], chunks=check["chunks"],
                   files_found=check["found"])
    source, word = rng.choice(sorted(corpus.words.items()))
    problem = search_finds(word, source, store, launcher, logs / f"trial{trial:02d}-search.log")
    if problem:
        outcome["problems"].append(problem)
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.split("\n\n")[0], "3 trials on a small corpus, forked runs (CI)",
                      ("--trials", "number of trials (default 24, or 3 with --quick)"),
                      launcher_help="cli: the installed docqa script (default); fork: a fork of this process",
                      workdir_help="keep stores and logs here (default: a temp dir, removed)")
    trials = args.trials or (3 if args.quick else 24)
    launcher, work, started = start(args, "docqa-crash-")
    try:
        # Older versions of the files, ingested, for the trials that start from them.
        old_store = None if args.quick else work / "old"
        if old_store:
            build_corpus(work / "corpus", args.quick, variant=1)
            old = Run(ingest_args(Corpus(work / "corpus", {}), old_store), launcher, work / "logs" / "old.log")
            if old.wait(timeout=RUN_TIMEOUT) != 0:
                raise SystemExit(f"ingest of the old corpus failed: {old.errors()[-2000:]}")
        corpus = build_corpus(work / "corpus", args.quick)
        ref = Run(ingest_args(corpus, work / "reference"), launcher, work / "logs" / "reference.log")
        if ref.wait(timeout=RUN_TIMEOUT) != 0:
            raise SystemExit(f"reference ingest failed: {ref.errors()[-2000:]}")
        t_reference = ref.seconds
        reference = {source: [list(pair) for pair in pairs]
                     for source, pairs in committed_chunks(work / "reference").items()}
        if set(reference) != set(corpus.words):
            raise SystemExit("the reference ingest did not store every corpus file")
        references = [reference]
        if old_store:
            references.append({s: [list(p) for p in pairs] for s, pairs in committed_chunks(old_store).items()})
        print(f"corpus: {len(corpus.words)} files, {sum(map(len, reference.values()))} chunks; "
              f"clean ingest {t_reference:.1f} s ({launcher})", flush=True)
        outcomes = []
        for trial in range(trials):
            outcome = run_trial(trial, args.seed, corpus, references, work, launcher, t_reference, old_store)
            outcomes.append(outcome)
            kills = ", ".join(f"{k['how']}@{k['at_s']}s{'' if k['landed'] else '(done)'} rows={k['rows_written']}"
                              f"{' chroma-damaged' if k['damaged_chroma'] else ''}" for k in outcome["kills"])
            status = "ok" if not outcome["problems"] else "FAILED: " + "; ".join(outcome["problems"])
            print(f"trial {trial:2d} [{outcome['start']}] kills: {kills} -> {status}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    kills = [k for o in outcomes for k in o["kills"]]
    landed = [k for k in kills if k["landed"]]
    expected = sum(map(len, reference.values()))
    failures = [{"trial": o["trial"], "start": o["start"], "problems": o["problems"]}
                for o in outcomes if o["problems"]]
    payload = {
        "what": "SIGKILL `docqa ingest` at random moments, re-run it, compare with a clean ingest",
        "launcher": launcher,
        "seed": args.seed,
        "trials": trials,
        "corpus": {"files": len(corpus.words), "chunks": expected,
                   "kinds": sorted({Path(s).suffix for s in corpus.words})},
        "starts": {s: sum(o["start"] == s for o in outcomes) for s in sorted({o["start"] for o in outcomes})},
        "kills_attempted": len(kills),
        "kills_landed": len(landed),
        "kills_mid_write": sum(k["rows_written"] > 0 and k["documents_committed"] < len(corpus.words)
                               for k in landed),
        "kills_that_left_chroma_unloadable": sum(k["damaged_chroma"] for k in kills),
        "faults_survived": sum(k["landed"] for o in outcomes if not o["problems"] for k in o["kills"]),
        "chunks_checked": sum(o["chunks"] for o in outcomes),
        "chunks_lost": sum(o["lost"] for o in outcomes),
        "chunks_duplicated": sum(o["duplicated"] for o in outcomes),
        "failures": failures,
        "clean_ingest_s": round(t_reference, 2),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"{trials} trials, {len(landed)}/{len(kills)} kills landed ({payload['kills_mid_write']} mid-write, "
          f"{payload['kills_that_left_chroma_unloadable']} left Chroma unloadable), "
          f"{payload['chunks_checked']} chunks checked, lost {payload['chunks_lost']}, duplicated "
          f"{payload['chunks_duplicated']}, {len(failures)} failed trials; {payload['seconds']} s", flush=True)
    return finish("crash", payload, args)


if __name__ == "__main__":
    sys.exit(main())
