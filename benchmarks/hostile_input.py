"""Hostile input at scale: many generated files through the readers and the chunker, then real ingests.

The same inputs as tests/test_hostile_input.py (testkit/hostile.py), in larger numbers: random bytes named
.txt/.md/.pdf, text with NULs, lone surrogates, bidi controls and zero-width characters in several
encodings, the same characters coming out of a PDF's ToUnicode map or handed straight to the chunker,
markdown nested tens of thousands deep, randomly damaged PDFs, and hand-made ones (broken xref table,
cyclic page tree, nested arrays, reference loops, a billion pages claimed, a decompression bomb), plus
5 MB single lines. Each must end as chunks that fit the model, a one-line error, or a --file-timeout
report; anything else (an exception, a hang) is a failure. Then `docqa ingest` runs on a directory of
such files and on a 5 MB line with --file-timeout 2, and the store is checked.

    python benchmarks/hostile_input.py            # ~1,500 generated inputs
    python benchmarks/hostile_input.py --quick    # ~160

Results go to benchmarks/results/reliability.json (section "hostile_input").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from benchmarks._reliability import Run, in_child, inspect_store, load_model, record  # noqa: E402
from docqa.chunking import chunk_pages  # noqa: E402
from docqa.readers import Page  # noqa: E402
from testkit.documents import (  # noqa: E402
    write_broken_xref_pdf,
    write_corrupt_pdf,
    write_cyclic_pages_pdf,
    write_text,
    write_truncated_pdf,
)
from testkit.hostile import (  # noqa: E402
    CHUNK_TOKENS,
    OVERLAP,
    Outcome,
    check_outcome,
    decompression_bomb_pdf,
    hostile_text,
    huge_line,
    many_pages_claimed_pdf,
    mutated_pdf,
    nested_array_pdf,
    nested_markdown,
    random_bytes,
    read_and_chunk,
    reference_loop_pdf,
    tounicode_pdf,
    write_hostile_directory,
)


class Tally:
    def __init__(self, tokenizer: Any, work: Path) -> None:
        self.tokenizer = tokenizer
        self.work = work
        self.tried: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = {}
        self.failures: list[dict[str, str]] = []
        self.slowest: dict[str, float] = {}

    def file(self, kind: str, data: bytes, suffix: str, seconds: float = 60.0) -> Outcome | None:
        path = self.work / f"input{suffix}"
        path.write_bytes(data)
        started = time.monotonic()
        try:
            outcome = read_and_chunk(path, self.tokenizer, seconds)
            check_outcome(outcome)
        except BaseException as exc:  # noqa: BLE001 - every escape is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.failures.append({"kind": kind, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                  "input": repr(data[:120])})
            outcome = None
        self._count(kind, outcome.kind if outcome else "FAILED", time.monotonic() - started)
        return outcome

    def pages(self, kind: str, texts: list[str]) -> None:
        started = time.monotonic()
        try:
            for chunk in chunk_pages([Page(n, t) for n, t in enumerate(texts, 1)], self.tokenizer, CHUNK_TOKENS,
                                     OVERLAP):
                chunk.text.encode("utf-8")
                assert chunk.tokens <= CHUNK_TOKENS
            result = "ok"
        except Exception as exc:  # noqa: BLE001
            self.failures.append({"kind": kind, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                  "input": repr(texts)[:200]})
            result = "FAILED"
        self._count(kind, result, time.monotonic() - started)

    def _count(self, kind: str, result: str, seconds: float) -> None:
        self.tried[kind] += 1
        self.outcomes.setdefault(kind, Counter())[result] += 1
        self.slowest[kind] = round(max(self.slowest.get(kind, 0.0), seconds), 2)


def generate(tally: Tally, scale: int) -> None:
    def run(kind: str, count: int, strategy: Any, feed: Any) -> None:
        @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def prop(value: Any) -> None:
            feed(value)

        prop()
        print(f"{kind}: {tally.tried[kind]} inputs, {dict(tally.outcomes.get(kind, {}))}", flush=True)

    encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"])
    run("random bytes", 3 * scale, st.tuples(random_bytes, st.sampled_from([".txt", ".md", ".pdf"])),
        lambda v: tally.file("random bytes", v[0], v[1]))
    run("hostile unicode text files", 3 * scale, st.tuples(hostile_text, encodings),
        lambda v: tally.file("hostile unicode text files",
                             v[0].encode(v[1], "surrogatepass" if v[1].startswith("utf") else "replace"), ".txt"))
    run("hostile unicode pages (chunker)", 3 * scale, st.lists(hostile_text, min_size=1, max_size=4),
        lambda v: tally.pages("hostile unicode pages (chunker)", v))
    run("hostile unicode from PDF ToUnicode", 2 * scale, hostile_text,
        lambda v: tally.file("hostile unicode from PDF ToUnicode", tounicode_pdf(v), ".pdf"))
    run("deeply nested markdown", scale, nested_markdown(),
        lambda v: tally.file("deeply nested markdown", v.encode("utf-8", "surrogatepass"), ".md"))
    run("damaged PDFs", 3 * scale, mutated_pdf(), lambda v: tally.file("damaged PDFs", v, ".pdf"))


def hand_made(tally: Tally) -> dict[str, Any]:
    work = tally.work
    samples = {
        "broken xref table": write_broken_xref_pdf(work / "x.pdf").read_bytes(),
        "cyclic page tree": write_cyclic_pages_pdf(work / "c.pdf").read_bytes(),
        "truncated PDF": write_truncated_pdf(work / "t.pdf").read_bytes(),
        "corrupt PDF": write_corrupt_pdf(work / "k.pdf").read_bytes(),
        "nested arrays 100k deep": nested_array_pdf(100_000),
        "reference loop": reference_loop_pdf(),
        "a billion pages claimed": many_pages_claimed_pdf(),
        "decompression bomb 64 MB": decompression_bomb_pdf(64),
    }
    details = {}
    for name, data in samples.items():
        started = time.monotonic()
        outcome = tally.file("hand-made hostile PDFs", data, ".pdf")
        details[name] = {"outcome": outcome.kind if outcome else "FAILED",
                         "message": outcome.message if outcome else "",
                         "seconds": round(time.monotonic() - started, 2)}
        print(f"{name}: {details[name]}", flush=True)
    for words in (True, False):
        name = f"5 MB single line ({'words' if words else 'no whitespace'})"
        started = time.monotonic()
        outcome = tally.file("huge single lines", huge_line(5 << 20, words).encode(), ".txt", seconds=300)
        details[name] = {"outcome": outcome.kind if outcome else "FAILED",
                         "chunks": len(outcome.chunks) if outcome else 0,
                         "seconds": round(time.monotonic() - started, 2)}
        print(f"{name}: {details[name]}", flush=True)
    return details


def real_ingests(work: Path, launcher: str) -> dict[str, Any]:
    """`docqa ingest` on a directory of hostile files, and on a 5 MB line under --file-timeout 2."""
    corpus = work / "hostile-dir"
    corpus.mkdir()
    names = write_hostile_directory(corpus, random.Random(6))
    store = work / "store"
    run = Run(["ingest", str(corpus), "--store", str(store), "--json", "-q"], launcher, work / "ingest.log")
    code = run.wait(timeout=1800)
    report = json.loads(run.output() or "{}")
    problems = []
    if code != 1:
        problems.append(f"exit code {code}, want 1 (some files fail, the rest go in)")
    if "unexpected error" in run.errors() or "Traceback" in run.errors():
        problems.append(f"unexpected error: {run.errors()[-500:]}")
    if report.get("files_ingested", 0) + len(report.get("files_failed", [])) != len(names):
        problems.append("not every file was either ingested or reported")
    words = {str((corpus / "good.txt").resolve()): "zqxgoodfile"}
    check = in_child(inspect_store, str(store), words, [], False)
    problems += check["problems"]

    slow = work / "slow"
    write_text(slow / "huge.txt", huge_line(5 << 20, words=True))
    write_text(slow / "good.txt", "A small file that must still go in after the huge one. zqxafterhuge")
    started = time.monotonic()
    timed = Run(["ingest", str(slow), "--store", str(work / "store2"), "--json", "-q", "--file-timeout", "2"],
                launcher, work / "timeout.log")
    timed.wait(timeout=1800)
    seconds = time.monotonic() - started
    timed_report = json.loads(timed.output() or "{}")
    failures = {Path(f["path"]).name: f["error"] for f in timed_report.get("files_failed", [])}
    if "took longer than 2 s" not in failures.get("huge.txt", "") or timed_report.get("files_ingested") != 1:
        problems.append(f"--file-timeout 2 on a 5 MB line: {timed_report}")
    return {
        "directory": {"files": len(names), "ingested": report.get("files_ingested"),
                      "reported": {Path(f["path"]).name: f["error"] for f in report.get("files_failed", [])},
                      "exit_code": code, "chunks": check["chunks"]},
        "file_timeout_2s_on_5MB_line": {"error": failures.get("huge.txt"), "run_seconds": round(seconds, 1),
                                        "note": "run_seconds includes starting docqa and loading the model"},
        "problems": problems,
        "lost": check["lost"],
        "duplicated": check["duplicated"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--launcher", choices=["cli", "fork"], default="cli")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 100
    for var in [v for v in os.environ if v.startswith("DOCQA_")]:
        del os.environ[var]
    started = time.monotonic()
    load_model()
    from docqa.embeddings.load import load_embedder

    work = Path(tempfile.mkdtemp(prefix="docqa-hostile-"))
    try:
        tally = Tally(load_embedder().tokenizer, work)
        generate(tally, scale)
        hand = hand_made(tally)
        ingests = real_ingests(work, args.launcher)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failures = tally.failures + [{"kind": "real ingest", "error": p} for p in ingests["problems"]]
    payload = {
        "what": "generated hostile files through read_pages + chunk_pages, then real `docqa ingest` runs",
        "trials": 2,
        "inputs_tried": sum(tally.tried.values()),
        "inputs_per_kind": dict(tally.tried),
        "outcomes_per_kind": {kind: dict(counts) for kind, counts in tally.outcomes.items()},
        "slowest_input_s_per_kind": tally.slowest,
        "hand_made": hand,
        "real_ingests": ingests,
        "faults_survived": sum(tally.tried.values()) - len(tally.failures),
        "chunks_lost": ingests["lost"],
        "chunks_duplicated": ingests["duplicated"],
        "failures": failures,
        "seconds": round(time.monotonic() - started, 1),
    }
    for failure in failures:
        print(f"FAILED {failure}", flush=True)
    print(f"{payload['inputs_tried']} inputs, {len(failures)} failures; {payload['seconds']} s", flush=True)
    if not args.no_record:
        print(f"wrote {record('hostile_input', payload)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
