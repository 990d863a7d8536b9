"""Crashes in server mode: kill `docqa ingest` writing to a `chroma run` server, or kill or stop the server itself.

The crash benchmark (crash_test.py) for a store kept in a Chroma server (`--chroma-url`). One real `chroma run`
serves every trial, each on a collection of its own, seeded, starting empty or holding older versions of the
corpus files (so faults land while documents are being replaced):

- server_crash: SIGKILL `docqa ingest` 1-3 times, each at a random moment (a random time after its start, or
  once the server holds a random number of its chunks plus a random delay); check the store as each kill
  left it (every committed file whole, nothing untracked); re-run the ingest and compare the store with a
  clean ingest: the same documents, the same chunks (ids and texts) once each, all reachable in the vector
  index, nothing left of the killed runs, and search (in a new process) finding each file by its own word.
- server_faults: while `docqa ingest` writes, SIGKILL the server and restart it, or SIGSTOP it and then
  SIGCONT it, or kill and restart it. docqa must end by itself with exit 1 and one line "docqa: error: ..."
  naming the server, within its time limit (DOCQA_CHROMA_TIMEOUT) plus a margin, or the trial counts a hang;
  then the store is checked as left, the ingest re-run and the store compared with a clean ingest.

The full form also times the calls the time limit must allow for: 128-chunk upserts (one ingest write at the
default --batch-size) into a collection growing to 100k chunks, and the largest upsert the server accepts.

    python benchmarks/server_crash_test.py          # 20 + 12 trials, real `docqa` processes, docqa's time limit
    python benchmarks/server_crash_test.py --quick  # 2 + 2 trials, forked runs, a 5 s time limit (CI)

Results go to benchmarks/results/reliability.json (sections "server_crash" and "server_faults"); exit code 1
if any trial failed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine  # noqa: E402
from benchmarks._reliability import (  # noqa: E402
    Corpus,
    Run,
    build_corpus,
    in_child,
    record,
    rng_for,
    search_output_problem,
    start,
)
from benchmarks._server_store import copy_collection, inspect_server_store, snapshot, vectors_in  # noqa: E402
from docqa.settings import Settings  # noqa: E402
from testkit.chroma_server import ChromaServer  # noqa: E402

RUN_TIMEOUT = 1800.0
FAULTS = ("kill, restart", "stop, resume", "stop, kill, restart")


@dataclass
class Bench:
    """What every trial shares: the server, the corpus and its clean ingests, how docqa runs."""

    server: ChromaServer
    corpus: Corpus
    references: list[dict[str, Any]]  # snapshots of clean ingests: the current corpus, then its older version
    launcher: str
    work: Path
    timeout: float  # docqa's time limit for one reply of the server
    env: dict[str, str]
    t_reference: float

    @property
    def generations(self) -> list[str]:
        return sorted({pairs[0][0].split(":")[0] for pairs in self.references[0]["chunks"].values()})

    @property
    def expected(self) -> int:
        return sum(map(len, self.references[0]["chunks"].values()))

    def run(self, args: list[str], collection: str, log: str) -> Run:
        return Run([*args, "--chroma-url", self.server.url, "--collection", collection, "--store",
                    str(self.work / "client")], self.launcher, self.work / "logs" / log, self.env)

    def ingest(self, collection: str, log: str) -> Run:
        # Small batches: several server writes per file, so faults land between the batches of a file too.
        return self.run(["ingest", str(self.corpus.directory), "-q", "--batch-size", "4"], collection, log)

    def check(self, collection: str, final: bool) -> dict[str, Any]:
        try:
            return in_child(inspect_server_store, self.server.url, collection, str(self.work / "client"),
                            self.corpus.words, self.references, final)
        except (RuntimeError, TimeoutError) as exc:
            return {"problems": [f"the store check itself failed: {str(exc)[-400:]}"], "lost": 0, "duplicated": 0,
                    "chunks": 0, "found": 0}

    def search_finds(self, collection: str, word: str, source: str, log: str) -> str | None:
        return search_output_problem(self.run(["search", word, "--json"], collection, log), word, source)

    def begin(self, trial: str, rng: Any) -> tuple[str, str]:
        """A fresh collection for a trial, empty or holding the older corpus; (its name, how it starts)."""
        how = rng.choice(["empty", "update"]) if len(self.references) > 1 else "empty"
        if how == "update":
            in_child(copy_collection, self.server.url, "old", trial)
        return trial, how

    def finish(self, outcome: dict[str, Any], collection: str, rng: Any, trial: str) -> None:
        """Re-run the ingest to completion, compare with a clean ingest, search in a new process."""
        final = self.ingest(collection, f"{trial}-final.log")
        try:
            if final.wait(timeout=RUN_TIMEOUT) != 0:
                outcome["problems"].append(f"re-run exited {final.returncode}: {final.errors()[-500:]}")
        except TimeoutError:
            outcome["hangs"] += 1
            outcome["problems"].append("the re-run hung")
        check = self.check(collection, final=True)
        outcome["problems"] += check["problems"]
        outcome.update(lost=check["lost"], duplicated=check["duplicated"], chunks=check["chunks"],
                       files_found=check["found"])
        source, word = rng.choice(sorted(self.corpus.words.items()))
        problem = self.search_finds(collection, word, source, f"{trial}-search.log")
        if problem:
            outcome["problems"].append(problem)
        logs = sorted((self.work / "logs").glob(f"{trial}-*.err"))
        outcome["tracebacks"] = sum("Traceback" in path.read_text(errors="replace") for path in logs)
        if outcome["tracebacks"]:
            outcome["problems"].append(f"{outcome['tracebacks']} runs printed a traceback")


def wait_until(run: Run, ready: Any, limit: float = RUN_TIMEOUT) -> None:
    while run.poll() is None and not ready() and run.seconds < limit:
        time.sleep(0.005)


def kill_trial(bench: Bench, number: int, seed: int) -> dict[str, Any]:
    """Kill `docqa ingest` 1-3 times at random moments, checking the store after each; re-run; compare."""
    rng = rng_for(seed, number)
    collection, how = bench.begin(f"kill-{number:02d}", rng)
    outcome: dict[str, Any] = {"trial": number, "start": how, "kills": [], "problems": [], "hangs": 0}
    for k in range(rng.choice([1, 1, 2, 3])):
        when = rng.choice(["time", "rows", "rows"])
        run = bench.ingest(collection, f"{collection}-run{k}.log")
        if when == "time":
            at = rng.uniform(0.0, bench.t_reference)
            wait_until(run, lambda: run.seconds >= at)  # noqa: B023 - waited for here, in this iteration
        else:
            written = vectors_in(bench.server.url, collection, bench.generations)
            target = rng.randint(min(written + 1, bench.expected), bench.expected)
            wait_until(run, lambda: vectors_in(bench.server.url, collection, bench.generations) >= target)  # noqa: B023
            at = run.seconds + rng.uniform(0.0, 0.5)
            wait_until(run, lambda: run.seconds >= at)  # noqa: B023
        written = vectors_in(bench.server.url, collection, bench.generations)
        landed = run.kill()
        if not landed and run.returncode != 0:
            outcome["problems"].append(f"run {k} finished before its kill with exit {run.returncode}")
        check = bench.check(collection, final=False)
        outcome["problems"] += [f"after kill {k}: {p}" for p in check["problems"]]
        outcome["kills"].append({"how": when, "at_s": round(run.seconds, 2), "landed": landed,
                                 "chunks_written": written})
        if not landed:
            break  # the run finished: later kills would only hit runs with nothing left to do
    bench.finish(outcome, collection, rng, collection)
    return outcome


def fault_trial(bench: Bench, number: int, seed: int) -> dict[str, Any]:
    """Kill or stop the server while `docqa ingest` writes; docqa must end in one line; bring it back; re-run."""
    rng = rng_for(seed, 1000 + number)
    fault = FAULTS[number % len(FAULTS)]
    collection, how = bench.begin(f"fault-{number:02d}", rng)
    outcome: dict[str, Any] = {"trial": number, "start": how, "fault": fault, "problems": [], "hangs": 0}
    run = bench.ingest(collection, f"{collection}-run.log")
    # Any moment before the last write (16 chunks a write at --batch-size 4).
    target = rng.randint(1, max(1, bench.expected - 16))
    wait_until(run, lambda: vectors_in(bench.server.url, collection, bench.generations) >= target)
    at = run.seconds + rng.uniform(0.0, 0.3)
    wait_until(run, lambda: run.seconds >= at)
    outcome["chunks_written"] = vectors_in(bench.server.url, collection, bench.generations)
    outcome["landed"] = run.poll() is None
    if fault.startswith("kill"):
        bench.server.kill()
    else:
        bench.server.stop()
    struck = time.monotonic()
    limit = 2 * bench.timeout + 60  # a time limit per call, a batch to embed, a clean-up call: then it hangs
    try:
        code = run.wait(timeout=limit)
        outcome["seconds_to_exit"] = round(time.monotonic() - struck, 2)
    except TimeoutError:
        code = None
        outcome["hangs"] += 1
        outcome["problems"].append(f"docqa ingest still ran {limit:.0f} s after the server's {fault.split(',')[0]}")
    if code == 0:  # its last call to the server came before the fault: nothing to report
        outcome["landed"] = False
    if outcome["landed"] and code is not None:
        lines = [line for line in run.errors().splitlines() if line.strip()]
        outcome["error"] = re.sub(r"http://[\d.]+:\d+", "URL", lines[0]) if lines else ""
        wanted = "stopped answering" if fault.startswith("stop") else "`chroma run`"
        outcome["one_line"] = (code == 1 and len(lines) == 1 and lines[0].startswith("docqa: error: ")
                               and bench.server.url in lines[0] and wanted in lines[0])
        if not outcome["one_line"]:
            outcome["problems"].append(f"not the one-line error: exit {code}, stderr {run.errors()[-600:]!r}")
    elif code not in (0, None):
        outcome["problems"].append(f"the run ended before the fault with exit {code}: {run.errors()[-300:]}")
    if fault == "stop, resume":
        bench.server.resume()
        time.sleep(1.0)  # what was in flight when it stopped goes in now; the check wants it settled
    else:
        bench.server.restart()
    check = bench.check(collection, final=False)
    outcome["problems"] += [f"as the fault left it: {p}" for p in check["problems"]]
    bench.finish(outcome, collection, rng, collection)
    return outcome


def time_server_calls(url: str, total: int) -> dict[str, Any]:
    """Seconds per 128-chunk upsert into a collection growing to `total` chunks, then per largest upsert the
    server accepts (runs in a child: it opens a client)."""
    import numpy as np

    from benchmarks._server_store import _client
    from testkit.documents import real_text_paragraphs

    client = _client(url)
    collection = client.create_collection("timing", embedding_function=None, metadata={"hnsw:space": "cosine"})
    texts = real_text_paragraphs(2500)
    rng = np.random.default_rng(0)

    def upsert(prefix: str, n: int, offset: int) -> float:
        vectors = rng.standard_normal((n, 384)).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        started = time.perf_counter()
        collection.upsert(ids=[f"{prefix}:{i}" for i in range(n)], embeddings=vectors,
                          documents=[texts[(offset + i) % len(texts)] for i in range(n)],
                          metadatas=[{"source": f"/t/{prefix}", "generation": prefix, "chunk": i, "page_start": 1,
                                      "page_end": 1, "section": ""} for i in range(n)])
        return time.perf_counter() - started

    batches = [upsert(f"g{b}", 128, b * 128) for b in range(total // 128)]
    largest = client.get_max_batch_size()
    seconds = {"upsert_128": {"collection_chunks": total, "batches": len(batches),
                              "median": round(statistics.median(batches), 3),
                              "p99": round(sorted(batches)[int(len(batches) * 0.99)], 3),
                              "max": round(max(batches), 3)},
               "largest_upsert": {"vectors": largest, "seconds": round(upsert("largest", largest, 0), 3)}}
    client.delete_collection("timing")
    return seconds


def summarise(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"trials": len(outcomes),
            "starts": {s: sum(o["start"] == s for o in outcomes) for s in sorted({o["start"] for o in outcomes})},
            "chunks_checked": sum(o.get("chunks", 0) for o in outcomes),
            "chunks_lost": sum(o.get("lost", 0) for o in outcomes),
            "chunks_duplicated": sum(o.get("duplicated", 0) for o in outcomes),
            "tracebacks": sum(o.get("tracebacks", 0) for o in outcomes),
            "hangs": sum(o["hangs"] for o in outcomes),
            "failures": [{"trial": o["trial"], "problems": o["problems"]} for o in outcomes if o["problems"]]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 + 2 trials, forked runs, a 5 s time limit (CI)")
    parser.add_argument("--trials", type=int, help="trials that kill docqa (default 20, or 2 with --quick)")
    parser.add_argument("--fault-trials", type=int, help="trials that kill or stop the server (default 12, or 2)")
    parser.add_argument("--timeout", type=float, help="DOCQA_CHROMA_TIMEOUT for the runs (default docqa's own, "
                        "or 5 with --quick)")
    parser.add_argument("--timing-chunks", type=int, help="time upserts up to this many chunks (default 100000; "
                        "0 with --quick: none)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--launcher", choices=["cli", "fork"], help="cli: the installed docqa (default); fork: a "
                        "fork of this process, the model loaded (default with --quick)")
    parser.add_argument("--workdir", type=Path, help="keep the server's data and the logs here (default: a temp dir)")
    parser.add_argument("--no-record", action="store_true", help="do not write reliability.json")
    parser.add_argument("--summary", type=Path, help="also write the results as JSON to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kill_trials = args.trials if args.trials is not None else (2 if args.quick else 20)
    fault_trials = args.fault_trials if args.fault_trials is not None else (2 if args.quick else 12)
    timeout = args.timeout or (5.0 if args.quick else Settings.chroma_timeout)
    timing_chunks = args.timing_chunks if args.timing_chunks is not None else (0 if args.quick else 100_000)
    launcher, work, started = start(args, "docqa-server-crash-")
    env = {"DOCQA_CHROMA_TIMEOUT": f"{timeout:g}"} if timeout != Settings.chroma_timeout else {}
    with ChromaServer(work / "server") as server:
        bench = Bench(server, Corpus(work / "corpus", {}), [], launcher, work, timeout, env, 0.0)
        if not args.quick:  # older versions of the files, ingested, for the trials that start from them
            build_corpus(work / "corpus", args.quick, variant=1)
            if bench.ingest("old", "old.log").wait(timeout=RUN_TIMEOUT) != 0:
                raise SystemExit(f"ingest of the old corpus failed: {(work / 'logs' / 'old.err').read_text()[-2000:]}")
        bench.corpus = build_corpus(work / "corpus", args.quick)
        reference = bench.ingest("reference", "reference.log")
        if reference.wait(timeout=RUN_TIMEOUT) != 0:
            raise SystemExit(f"reference ingest failed: {reference.errors()[-2000:]}")
        bench.t_reference = reference.seconds
        bench.references = [in_child(snapshot, server.url, "reference")]
        if not args.quick:
            bench.references.append(in_child(snapshot, server.url, "old"))
        if set(bench.references[0]["chunks"]) != set(bench.corpus.words):
            raise SystemExit("the reference ingest did not store every corpus file")
        print(f"corpus: {len(bench.corpus.words)} files, {bench.expected} chunks; clean ingest "
              f"{bench.t_reference:.1f} s ({launcher}); docqa's time limit {timeout:g} s", flush=True)
        kills = []
        for number in range(kill_trials):
            kills.append(kill_trial(bench, number, args.seed))
            outcome = kills[-1]
            shots = ", ".join(f"{k['how']}@{k['at_s']}s{'' if k['landed'] else '(done)'} chunks={k['chunks_written']}"
                              for k in outcome["kills"])
            print(f"kill trial {number:2d} [{outcome['start']}] {shots} -> "
                  f"{'ok' if not outcome['problems'] else 'FAILED: ' + '; '.join(outcome['problems'])}", flush=True)
        faults = []
        for number in range(fault_trials):
            faults.append(fault_trial(bench, number, args.seed))
            outcome = faults[-1]
            print(f"fault trial {number:2d} [{outcome['start']}] {outcome['fault']} at chunks="
                  f"{outcome['chunks_written']}{'' if outcome['landed'] else ' (run done)'}: exit after "
                  f"{outcome.get('seconds_to_exit')} s, {outcome.get('error', '')!r} -> "
                  f"{'ok' if not outcome['problems'] else 'FAILED: ' + '; '.join(outcome['problems'])}", flush=True)
        timing = in_child(time_server_calls, server.url, timing_chunks, timeout=3600) if timing_chunks else None
    corpus = {"files": len(bench.corpus.words), "chunks": bench.expected,
              "kinds": sorted({Path(s).suffix for s in bench.corpus.words})}
    common = {"launcher": launcher, "seed": args.seed, "corpus": corpus, "clean_ingest_s": round(bench.t_reference, 2),
              "docqa_timeout_s": timeout}
    landed_kills = [k for o in kills for k in o["kills"] if k["landed"]]
    crash = {"what": "SIGKILL `docqa ingest` writing to a `chroma run` server at random moments, re-run it, "
                     "compare with a clean ingest", **common, **summarise(kills),
             "kills_attempted": sum(len(o["kills"]) for o in kills), "kills_landed": len(landed_kills),
             "kills_mid_write": sum(0 < k["chunks_written"] < bench.expected for k in landed_kills)}
    struck = [o for o in faults if o["landed"]]
    exits = {f: [o["seconds_to_exit"] for o in struck if o["fault"] == f and "seconds_to_exit" in o] for f in FAULTS}
    server_faults = {"what": "SIGKILL or SIGSTOP the `chroma run` server mid-ingest; docqa must end in one line "
                             "within its time limit; bring the server back, re-run, compare with a clean ingest",
                     **common, **summarise(faults), "faults": {f: sum(o["fault"] == f for o in faults) for f in FAULTS},
                     "faults_landed": len(struck),
                     "one_line_errors": sum(o.get("one_line", False) for o in struck),
                     "seconds_to_exit_max": {f: max(v) for f, v in exits.items() if v},
                     "errors_seen": sorted({o["error"] for o in struck if o.get("error")}),
                     "server_call_seconds": timing}
    elapsed = round(time.monotonic() - started, 1)
    for name, payload in (("server_crash", crash), ("server_faults", server_faults)):
        payload.update(seconds=elapsed, machine=machine())
        print(f"{name}: {payload['trials']} trials, lost {payload['chunks_lost']}, duplicated "
              f"{payload['chunks_duplicated']}, tracebacks {payload['tracebacks']}, hangs {payload['hangs']}, "
              f"{len(payload['failures'])} failed", flush=True)
        if not args.no_record:
            print(f"wrote {record(name, payload)}")
    if args.summary:
        args.summary.write_text(json.dumps({"server_crash": crash, "server_faults": server_faults}, indent=2))
    if not args.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if crash["failures"] or server_faults["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
