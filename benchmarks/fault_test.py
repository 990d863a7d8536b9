"""Damaged files and full disks: every fault ends in a store equal to a clean ingest, or in one line then a repair.

Corruption suite: each kind of file a local store holds (the catalog, Chroma's chroma.sqlite3, each file of the
saved HNSW index, the whole chroma/ directory) truncated, garbled (seeded bytes overwritten) and deleted, in a
copy of a clean store. Then a user's commands run as their own processes: `list`, `search` (hybrid and dense)
and `ingest` of the same corpus. Each must answer (exit 0) or fail in one line (exit 1, its last stderr line
"docqa: error: ..."): no traceback, no crash (signal), no hang. If any failed, `docqa repair` must succeed; a
last `ingest` must then succeed, and the store must equal a clean ingest of the corpus (every chunk once, the
catalog, its lexical index and Chroma's vectors agreeing, search finding every file): checked by
_reliability.inspect_store, as after the crash trials.

Disk-full trials (root only: each mounts a tmpfs): the corpus is ingested into a store on a tmpfs of a seeded
size smaller than the store needs, or while another process fills the disk at a seeded moment. The ingest must
end (exit 0 or 1, one line, a JSON report whose failed files name the full disk) with every committed file whole
and searchable on the still-full disk; after the disk is enlarged (or the filler removed) a re-run must make
the store equal to a clean ingest (running `docqa repair` first if a search says to).

    python benchmarks/fault_test.py             # the whole suite, real `docqa` subprocesses
    python benchmarks/fault_test.py --quick     # 5 faults and 2 disk-full trials, forked runs (CI; about a minute)

Results go to benchmarks/results/reliability.json (section "faults"); exit code 1 if any trial failed.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._reliability import (  # noqa: E402
    Corpus,
    Run,
    build_corpus,
    committed_chunks,
    finish,
    in_child,
    inspect_store,
    parse_args,
    rng_for,
    start,
)
from benchmarks.crash_test import make_stress_collection  # noqa: E402

RUN_TIMEOUT = 600.0
INDEX_FILES = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle")
FILES = ("catalog", "chroma.sqlite3", *INDEX_FILES)
QUICK_FAULTS = [("truncate", "catalog"), ("garble", "chroma.sqlite3"), ("truncate", "header.bin"),
                ("delete", "index_metadata.pickle"), ("delete", "chroma/")]


def all_faults() -> list[tuple[str, str]]:
    return [(kind, name) for name in FILES for kind in ("truncate", "garble", "delete")] + [("delete", "chroma/")]


def damage(store: Path, kind: str, name: str, rng: random.Random) -> str:
    """Damage one file of the store; return what was done."""
    if name == "chroma/":
        shutil.rmtree(store / "chroma")
        return "deleted chroma/"
    if name == "catalog":
        target = store / "docqa.catalog.sqlite3"
    elif name == "chroma.sqlite3":
        target = store / "chroma" / "chroma.sqlite3"
    else:
        target = next(p for p in (store / "chroma").iterdir() if p.is_dir()) / name
    size = target.stat().st_size
    if kind == "delete":
        target.unlink()
        return f"deleted {name} ({size} bytes)"
    data = bytearray(target.read_bytes())
    if kind == "truncate":
        keep = rng.randrange(0, max(1, size))
        target.write_bytes(bytes(data[:keep]))
        return f"truncated {name} to {keep} of {size} bytes"
    start = rng.randrange(0, max(1, size))
    length = min(size - start, rng.choice([16, 512, 4096, 65536]))
    data[start : start + length] = bytes(rng.randrange(256) for _ in range(length))
    target.write_bytes(bytes(data))
    return f"garbled {length} bytes of {name} at {start} of {size}"


class Outcomes:
    """What the commands of all trials did, counted the way reliability.json reports them."""

    def __init__(self) -> None:
        self.commands = self.one_line_errors = self.tracebacks = self.hangs = self.crashes = 0
        self.repairs = self.silent_misses = 0

    def run(self, args: list[str], launcher: str, log: Path, problems: list[str],
            timeout: float = RUN_TIMEOUT) -> tuple[int | None, str, str]:
        """Run `docqa ARGS`; (exit code or None if it hung, stdout, stderr), with what is wrong in `problems`."""
        self.commands += 1
        run = Run(args, launcher, log)
        try:
            code: int | None = run.wait(timeout=timeout)
        except TimeoutError:
            self.hangs += 1
            problems.append(f"docqa {args[0]} hung (killed after {timeout:.0f} s)")
            return None, run.output(), run.errors()
        out, err = run.output(), run.errors()
        if "Traceback" in err or "unexpected error" in err:
            self.tracebacks += 1
            problems.append(f"docqa {args[0]}: {err.strip().splitlines()[-1][:300]}")
        elif code == 1:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            if last.startswith("docqa: error:"):
                self.one_line_errors += 1
            else:
                problems.append(f"docqa {args[0]} exited 1 without a one-line error: {err[-300:]!r}")
        elif code != 0:
            self.crashes += 1
            problems.append(f"docqa {args[0]} ended with exit code {code} (a signal if negative)")
        return code, out, err


def check_store(store: Path, corpus: Corpus, reference: dict[str, Any], final: bool) -> dict[str, Any]:
    try:
        return in_child(inspect_store, str(store), corpus.words, [reference], final)
    except (RuntimeError, TimeoutError) as exc:
        return {"problems": [f"the store check itself failed: {str(exc)[-400:]}"], "lost": 0, "duplicated": 0,
                "chunks": 0, "found": 0}


def corruption_trial(n: int, kind: str, name: str, seed: int, pristine: Path, corpus: Corpus,
                     reference: dict[str, Any], work: Path, launcher: str, counts: Outcomes) -> dict[str, Any]:
    rng = rng_for(seed, 1000 + n)
    store = work / f"fault-{n:02d}"
    shutil.copytree(pristine, store)
    what = damage(store, kind, name, rng)
    problems: list[str] = []
    logs = work / "logs" / f"fault{n:02d}"
    source, word = rng.choice(sorted(corpus.words.items()))
    failed = False
    for step, args in enumerate([["list"], ["search", word, "--json"], ["search", word, "--mode", "dense", "--json"],
                                 ["ingest", str(corpus.directory), "-q"]]):
        code, out, _ = counts.run([*args, "--store", str(store)], launcher, logs.with_name(f"{logs.name}-{step}"),
                                  problems)
        failed |= code != 0
        if code == 0 and args[0] == "search" and source not in {h["source"] for h in json.loads(out)["results"]}:
            counts.silent_misses += 1  # a damaged index answering wrong before it is repaired: counted, not failed
    repaired = False
    if failed:
        code, out, _ = counts.run(["repair", "--store", str(store), "--json"], launcher, logs.with_name(
            f"{logs.name}-repair"), problems)
        repaired = code == 0
        counts.repairs += repaired
        if code != 0:
            problems.append(f"docqa repair exited {code}")
        code, _, _ = counts.run(["ingest", str(corpus.directory), "-q", "--store", str(store)], launcher,
                                logs.with_name(f"{logs.name}-final"), problems)
        if code != 0:
            problems.append(f"the ingest after the repair exited {code}")
    check = check_store(store, corpus, reference, final=True)
    shutil.rmtree(store, ignore_errors=True)
    return {"trial": n, "fault": what, "failed_before_repair": failed, "repaired": repaired,
            "problems": problems + check["problems"], "lost": check["lost"], "duplicated": check["duplicated"],
            "chunks": check["chunks"]}


def disk_trial(n: int, seed: int, corpus: Corpus, reference: dict[str, Any], needed_kb: int, work: Path,
               launcher: str, counts: Outcomes) -> dict[str, Any]:
    """Ingest onto a tmpfs too small for the store (or one that another process fills), then grow it, re-run."""
    rng = rng_for(seed, 2000 + n)
    disk = work / f"disk-{n:02d}"
    disk.mkdir()
    how = rng.choice(["small", "filled"])
    # Chroma's empty database takes ~0.7 MB and docqa keeps 1 MB free (health.LOW_SPACE): a disk smaller than
    # that takes no file at all, one a little larger some of them.
    size_kb = 1024 + rng.randint(needed_kb // 2, needed_kb * 5 // 4) if how == "small" else needed_kb * 3
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise PermissionError(done.stderr.strip())
    store = disk / "store"
    problems: list[str] = []
    logs = work / "logs" / f"disk{n:02d}"
    first_exit, report = None, {}
    try:
        filler = _fill_later(disk / "filler", store / "docqa.catalog.sqlite3", rng.uniform(0.0, 3.0)) \
            if how == "filled" else None
        # Small batches: several store writes per file, so the disk can fill between any two of them.
        code, out, _ = counts.run(["ingest", str(corpus.directory), "-q", "--json", "--batch-size", "4", "--store",
                                   str(store)], launcher, logs.with_name(f"{logs.name}-0"), problems)
        if filler:
            filler.join()
        first_exit = code
        report = json.loads(out) if out.strip() else {}
        if code == 1 and report and not all("full" in f["error"] or "space" in f["error"]
                                            for f in report.get("files_failed", [])):
            problems.append(f"files failed for another reason than the full disk: {report['files_failed'][:2]}")
        if code == 1 and not report:
            problems.append("no JSON report from the ingest that filled the disk")
        if how == "filled":
            # Chroma writes as it opens a store: on a disk filled to the last byte by someone else not even a
            # search can run, so the committed files are checked once the filler is gone. Its index may have
            # been saved half-way then: the next writer rebuilds it (counted, not failed).
            (disk / "filler").unlink(missing_ok=True)
        if (store / "chroma").exists():
            check = check_store(store, corpus, reference, final=False)
            index_damaged = how == "filled" and any("vector index" in p for p in check["problems"])
            if not index_damaged:
                problems += [f"after the disk filled: {p}" for p in check["problems"]]
        subprocess.run(["mount", "-o", f"remount,size={needed_kb * 4}k", str(disk)], check=True)
        (disk / "filler").unlink(missing_ok=True)
        code, _, err = counts.run(["ingest", str(corpus.directory), "-q", "--store", str(store)], launcher,
                                  logs.with_name(f"{logs.name}-1"), problems)
        if code != 0 and "docqa repair" in err:
            code, _, _ = counts.run(["repair", "--store", str(store)], launcher, logs.with_name(f"{logs.name}-r"),
                                    problems)
            counts.repairs += code == 0
            code, _, _ = counts.run(["ingest", str(corpus.directory), "-q", "--store", str(store)], launcher,
                                    logs.with_name(f"{logs.name}-2"), problems)
        if code != 0:
            problems.append(f"the re-run after the disk was enlarged exited {code}")
        final = check_store(store, corpus, reference, final=True)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)
    return {"trial": n, "disk": how, "size_kb": size_kb, "first_exit": first_exit,
            "files_stored_before_full": report.get("files_ingested"), "problems": problems + final["problems"],
            "lost": final["lost"], "duplicated": final["duplicated"], "chunks": final["chunks"]}


def _fill_later(path: Path, catalog: Path, delay: float) -> threading.Thread:
    """Another process's file growing until the disk is full, from `delay` seconds after the ingest has begun
    writing (its catalog exists): the model loads first, and a disk full before any write tests little."""
    def fill() -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not catalog.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64k"], capture_output=True, check=False)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.split("\n\n")[0], "5 faults and 2 disk-full trials on a small corpus (CI)",
                      ("--disk-trials", "disk-full trials (default 8, or 2 with --quick)"),
                      launcher_help="cli: the installed docqa script (default); fork: a fork of this process",
                      workdir_help="keep stores and logs here (default: a temp dir, removed)")
    launcher, work, started = start(args, "docqa-faults-")
    counts = Outcomes()
    try:
        corpus = build_corpus(work / "corpus", args.quick)
        pristine = work / "pristine"
        in_child(make_stress_collection, str(pristine))  # saves its index every 8 vectors: files to damage
        ref = Run(["ingest", str(corpus.directory), "--store", str(pristine), "-q"], launcher,
                  work / "logs" / "ref.log")
        if ref.wait(timeout=RUN_TIMEOUT) != 0:
            raise SystemExit(f"reference ingest failed: {ref.errors()[-2000:]}")
        with contextlib.closing(sqlite3.connect(pristine / "docqa.catalog.sqlite3")) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a clean close leaves it: the data in the file itself
        reference = {s: [list(p) for p in pairs] for s, pairs in committed_chunks(pristine).items()}
        needed_kb = sum(p.stat().st_size for p in pristine.rglob("*") if p.is_file()) // 1024
        faults = QUICK_FAULTS if args.quick else all_faults()
        print(f"corpus: {len(corpus.words)} files, {sum(map(len, reference.values()))} chunks, store {needed_kb} KB; "
              f"{len(faults)} faults ({launcher})", flush=True)
        outcomes = []
        for n, (kind, name) in enumerate(faults):
            outcome = corruption_trial(n, kind, name, args.seed, pristine, corpus, reference, work, launcher, counts)
            outcomes.append(outcome)
            status = "ok" if not outcome["problems"] else "FAILED: " + "; ".join(outcome["problems"])
            answer = "one-line error, repaired" if outcome["failed_before_repair"] else "answered"
            print(f"fault {n:2d} {outcome['fault']}: {answer} -> {status}", flush=True)
        disks = []
        for n in range(args.disk_trials if args.disk_trials is not None else (2 if args.quick else 8)):
            try:
                outcome = disk_trial(n, args.seed, corpus, reference, needed_kb, work, launcher, counts)
            except PermissionError as exc:
                print(f"disk-full trials skipped: cannot mount a tmpfs here ({exc})", flush=True)
                break
            disks.append(outcome)
            status = "ok" if not outcome["problems"] else "FAILED: " + "; ".join(outcome["problems"])
            print(f"disk {n:2d} [{outcome['disk']} {outcome['size_kb']} KB] stored "
                  f"{outcome['files_stored_before_full']} files before it filled -> {status}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    trials = outcomes + disks
    failures = [{"trial": o["trial"], "what": o.get("fault") or o.get("disk"), "problems": o["problems"]}
                for o in trials if o["problems"]]
    payload = {
        "what": "damaged files (truncated, garbled, deleted) and full disks, each followed by a user's commands, "
                "`docqa repair` where one failed, and a comparison with a clean ingest",
        "launcher": launcher,
        "seed": args.seed,
        "trials": len(trials),
        "corpus": {"files": len(corpus.words), "chunks": sum(map(len, reference.values())), "store_kb": needed_kb},
        "corruption_trials": len(outcomes),
        "disk_full_trials": len(disks),
        "commands_run": counts.commands,
        "one_line_errors": counts.one_line_errors,
        "repairs": counts.repairs,
        "faults_survived": sum(not o["problems"] for o in trials),
        "searches_that_missed_before_repair": counts.silent_misses,
        "chunks_checked": sum(o["chunks"] for o in trials),
        "chunks_lost": sum(o["lost"] for o in trials),
        "chunks_duplicated": sum(o["duplicated"] for o in trials),
        "tracebacks": counts.tracebacks,
        "hangs": counts.hangs,
        "crashes": counts.crashes,
        "failures": failures,
        "trial_results": trials,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"{len(trials)} trials ({len(outcomes)} damaged files, {len(disks)} full disks): {counts.commands} commands, "
          f"{counts.one_line_errors} one-line errors, {counts.repairs} repairs; lost {payload['chunks_lost']}, "
          f"duplicated {payload['chunks_duplicated']}, tracebacks {counts.tracebacks}, hangs {counts.hangs}, crashes "
          f"{counts.crashes}; {len(failures)} failed trials; {payload['seconds']} s", flush=True)
    return finish("faults", payload, args)


if __name__ == "__main__":
    sys.exit(main())
