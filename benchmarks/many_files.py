"""Many small files: `docqa ingest` of a directory of short text files, in files per second.

    python benchmarks/many_files.py                          # 200 files, torch and static tiers
    python benchmarks/many_files.py --quick                  # 60 files, 2 rounds
    python benchmarks/many_files.py --baseline /tmp/before   # also an older tree, rounds alternating

Each file is one to three NQ-open Wikipedia passages (one to three chunks), so the cost that does not
depend on the text (store writes, transactions, model calls per file) is what is measured. A round is one
fresh process that loads the model, then times `Ingestor.run` (what `docqa ingest` runs once its options
are parsed: read, chunk, embed, store) over the whole directory into an empty store, then a second run
over the same, unchanged files (it must add nothing). With --baseline DIR the same rounds also run with
the docqa package of DIR (e.g. a `git worktree` of an older commit), alternating with this tree's so that
drifting load from other processes hits both; the figure is the ratio of the two, per tier. Each side's
fastest round is its estimate (interference only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, passage_text, write_result  # noqa: E402

# One round, in a process of its own whose docqa comes from PYTHONPATH: prints its figures as JSON.
WORKER = """
import json, sys, time
from pathlib import Path
import docqa
from docqa.embeddings.load import load_embedder
from docqa.ingest.pipeline import Ingestor
from docqa.settings import Settings
from docqa.archive.store import ArchivalStore
corpus, store, backend = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
embedder = load_embedder("sentence-transformers/all-MiniLM-L6-v2", backend)
embedder.embed(["warm-up text for the model"] * 4)
settings = Settings(store_dir=store, embedding_backend=backend)
out = {"docqa": docqa.__file__}
for name in ("first", "again"):
    ingestor = Ingestor(ArchivalStore(settings, embedder), progress=False, notice=lambda m: None)
    started, cpu = time.perf_counter(), time.process_time()
    report = ingestor.run([corpus])
    out[name] = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                 "files_ingested": report.files_ingested,
                 "files_unchanged": report.files_unchanged, "failed": len(report.files_failed),
                 "chunks_added": report.chunks_added, "chunks_total": report.chunks_total}
print(json.dumps(out))
"""


def write_corpus(directory: Path, files: int, seed: int = 0) -> int:
    """`files` text files of 1-3 consecutive NQ passages each; returns the number of passages used."""
    from _common import nq_questions

    passages: list[str] = []
    seen: set[str] = set()
    for record in nq_questions():
        if record["text"] not in seen:
            seen.add(record["text"])
            passages.append(passage_text(record["title"], record["text"]))
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    used = 0
    for n in range(files):
        count = rng.randint(1, 3)
        (directory / f"note-{n:04d}.txt").write_text("\n\n".join(passages[used : used + count]) + "\n")
        used += count
    return used


def run_round(tree: Path, corpus: Path, store: Path, backend: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQA_")}
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run([sys.executable, "-c", WORKER, str(corpus), str(store), backend], capture_output=True,
                          text=True, env=env, cwd=tree, check=False)
    if done.returncode != 0:
        raise SystemExit(f"round with {tree} failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["docqa"]).is_relative_to(tree):
        raise SystemExit(f"the round meant for {tree} imported docqa from {result['docqa']}")
    return result


def summarise(rounds: list[dict[str, Any]], files: int) -> dict[str, Any]:
    first = min(r["first"]["seconds"] for r in rounds)
    again = min(r["again"]["seconds"] for r in rounds)
    cpu = min(r["first"]["cpu_seconds"] for r in rounds)
    report = rounds[0]["first"]
    return {"files_per_s": round(files / first, 2), "chunks_per_s": round(report["chunks_added"] / first, 2),
            "seconds": round(first, 3), "cpu_seconds": round(cpu, 3),
            "files_per_cpu_s": round(files / cpu, 2), "unchanged_files_per_s": round(files / again, 1),
            "unchanged_seconds": round(again, 3), "chunks": report["chunks_added"],
            "rounds_s": [round(r["first"]["seconds"], 3) for r in rounds],
            "rounds_unchanged_s": [round(r["again"]["seconds"], 3) for r in rounds]}


def commit_of(tree: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def check(result: dict[str, Any], files: int) -> None:
    """Both sides must have done the whole job, or their times mean nothing."""
    first, again = result["first"], result["again"]
    if first["files_ingested"] != files or first["failed"] or first["chunks_total"] != first["chunks_added"]:
        raise SystemExit(f"the first ingest did not store every file: {first}")
    if again["files_unchanged"] != files or again["chunks_added"] or again["chunks_total"] != first["chunks_total"]:
        raise SystemExit(f"the second ingest of unchanged files was not a no-op: {again}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 files, 2 rounds")
    parser.add_argument("--files", type=int, help="number of files (default 200, quick 60)")
    parser.add_argument("--backends", default="torch,static", help="comma-separated embedding tiers")
    parser.add_argument("--rounds", type=int, help="rounds per side (default 3, quick 2)")
    parser.add_argument("--baseline", type=Path, help="a tree holding an older docqa/ to compare with")
    args = parser.parse_args(argv)
    files = args.files or (60 if args.quick else 200)
    backends = args.backends.split(",")
    rounds = args.rounds or (2 if args.quick else 3)
    trees = {"current": ROOT}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    info = machine()
    print(f"load average at start: {info['load_average']}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="docqa-bench-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "corpus"
        passages = write_corpus(corpus, files)
        for backend in backends:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
            for round_ in range(rounds):
                # Alternate the order each round so that drifting load hits both sides alike.
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                for name in order:
                    store = workdir / f"store-{backend}-{name}-{round_}"
                    result = run_round(trees[name], corpus, store, backend)
                    check(result, files)
                    runs[name].append(result)
                    print(f"{backend} round {round_ + 1}/{rounds} {name} (load {os.getloadavg()[0]:.2f}): "
                          f"{files} files in {result['first']['seconds']:.2f} s "
                          f"({files / result['first']['seconds']:.1f} files/s); unchanged re-run "
                          f"{result['again']['seconds']:.2f} s", flush=True)
            summary = {name: summarise(runs[name], files) for name in trees}
            if "baseline" in summary:
                current, baseline = summary["current"], summary["baseline"]
                summary["speedup"] = round(current["files_per_s"] / baseline["files_per_s"], 3)
                summary["speedup_cpu"] = round(current["files_per_cpu_s"] / baseline["files_per_cpu_s"], 3)
                summary["unchanged_speedup"] = round(current["unchanged_files_per_s"]
                                                     / baseline["unchanged_files_per_s"], 3)
                print(f"{backend}: {current['files_per_s']} files/s against {baseline['files_per_s']} "
                      f"(x{summary['speedup']}, CPU time x{summary['speedup_cpu']}); unchanged re-run "
                      f"x{summary['unchanged_speedup']}", flush=True)
            else:
                print(f"{backend}: {summary['current']['files_per_s']} files/s, "
                      f"{summary['current']['chunks_per_s']} chunks/s", flush=True)
            results[backend] = summary
    payload = {
        "quick": args.quick,
        "corpus": {"files": files, "passages": passages,
                   "source": "NQ-open gold Wikipedia passages, 1-3 per .txt file (seeded)"},
        "settings": {"chunk_tokens": 200, "overlap_tokens": 40, "batch_size": 32, "rounds": rounds},
        "baseline": {"tree": str(args.baseline), "commit": commit_of(args.baseline)} if args.baseline else None,
        "estimator": "fastest round of each side (wall, and separately process CPU time, all threads); "
                     "the rounds alternate between the trees",
        "results": results,
        "machine": info,
    }
    write_result("many_files_quick" if args.quick else "many_files", payload)
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"{time.monotonic() - started:.0f} s")
    sys.exit(code)
