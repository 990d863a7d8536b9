"""Memory: peak RSS of `docqa ingest` on long PDFs of growing length (streamed pages and batches).

    python benchmarks/memory.py            # 100 and 400 pages (torch), 100/400/1200 pages (static); ~5 min
    python benchmarks/memory.py --quick    # 40 and 80 pages (torch), 40/400 pages (static); under 2 minutes

Each ingest is a fresh `docqa ingest PDF --store NEW` process; its resident set size is sampled from
/proc every 0.1 s (VmRSS, the curve) and read at the end (VmHWM, the kernel's exact peak). The target:
peak under 2 GB, and not growing with the document's length: the peak for the longest document is
compared with the shortest (a growth of a few MB is noise; tens of MB per hundred pages would be a
leak). The shortest runs are past the first store batch (128 chunks, about 37 pages), so the model's
and the tokenizer's warm-up buffers are in every run's peak. PDFs are NQ-open Wikipedia passages
laid out by benchmarks/make_long_pdf.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, plot_to, write_result  # noqa: E402

TARGET_PEAK_MB = 2048
GROWTH_TOLERANCE_MB = 50  # between the shortest and the longest document


def status_mb(pid: int) -> dict[str, float]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _unit = line.split()
                values[key.rstrip(":")] = int(amount) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def ingest_with_rss(pdf: Path, store: Path, backend: str) -> dict:
    env = {**os.environ, "DOCQA_EMBEDDING_BACKEND": backend}
    # The child waits for "go" on stdin before exiting, so VmHWM can be read after the ingest finished.
    code = ("import sys\nfrom docqa.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    print('exit', e.code, file=sys.stderr, flush=True)\n    sys.stdin.readline()\n")
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, "ingest", str(pdf), "--store", str(store), "-q", "--json"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    samples: list[tuple[float, float]] = []
    peak = 0.0
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(child.stderr, selectors.EVENT_READ)
    stderr_lines: list[str] = []
    finished = False
    while not finished:
        for _key, _ in selector.select(timeout=0.1):
            line = child.stderr.readline()
            if not line:
                finished = True
                break
            stderr_lines.append(line)
            if line.startswith("exit "):
                finished = True
        stats = status_mb(child.pid)
        if "VmRSS" in stats:
            samples.append((round(time.perf_counter() - started, 2), round(stats["VmRSS"], 1)))
        peak = max(peak, stats.get("VmHWM", 0.0))
        if child.poll() is not None:
            break
    seconds = time.perf_counter() - started
    peak = max(peak, status_mb(child.pid).get("VmHWM", 0.0))
    child.communicate("go\n", timeout=60)
    status = next((line for line in stderr_lines if line.startswith("exit ")), "exit ?").split()[1]
    if status not in ("0", "None"):
        raise SystemExit(f"docqa ingest failed: {''.join(stderr_lines)[-2000:]}")
    return {"peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1), "samples": samples}


def plot(runs: list[dict], path: Path) -> None:
    with plot_to(path, "docqa ingest memory against document length", "fraction of the ingest's duration",
                 "resident set size (MB)") as ax:
        for run in runs:
            xs = [t / max(run["seconds"], 1e-9) for t, _ in run["samples"]]
            ax.plot(xs, [mb for _, mb in run["samples"]], label=f"{run['backend']}, {run['pages']} pages "
                    f"(peak {run['peak_rss_mb']:.0f} MB)", linewidth=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    plan = ([("torch", 40), ("torch", 80), ("static", 40), ("static", 400)] if args.quick else
            [("torch", 100), ("torch", 400), ("static", 100), ("static", 400), ("static", 1200)])
    info = machine()
    print(f"load average at start: {info['load_average']}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="docqa-bench-") as tmp:
        workdir = Path(tmp)
        pdfs: dict[int, Path] = {}
        for backend, pages in plan:
            if pages not in pdfs:
                pdfs[pages] = workdir / f"long-{pages}.pdf"
                subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_long_pdf.py"), str(pdfs[pages]),
                                "--pages", str(pages)], check=True, stdout=subprocess.DEVNULL)
            run = ingest_with_rss(pdfs[pages], workdir / f"store-{backend}-{pages}", backend)
            run.update(backend=backend, pages=pages, pdf_bytes=pdfs[pages].stat().st_size)
            runs.append(run)
            print(f"{backend:>6} {pages:>5} pages: peak RSS {run['peak_rss_mb']:7.1f} MB in {run['seconds']:.1f} s")
    verdicts = {}
    for backend in ("torch", "static"):
        mine = [r for r in runs if r["backend"] == backend]
        growth = mine[-1]["peak_rss_mb"] - mine[0]["peak_rss_mb"]
        verdicts[backend] = {"pages": [r["pages"] for r in mine], "peaks_mb": [r["peak_rss_mb"] for r in mine],
                             "growth_mb_shortest_to_longest": round(growth, 1),
                             "growth_mb_per_100_pages": round(growth / (mine[-1]["pages"] - mine[0]["pages"]) * 100,
                                                              2)}
    peak = max(r["peak_rss_mb"] for r in runs)
    flat = all(v["growth_mb_shortest_to_longest"] <= GROWTH_TOLERANCE_MB for v in verdicts.values())
    result = {"quick": args.quick, "runs": [{k: v for k, v in r.items() if k != "samples"} for r in runs],
              "by_backend": verdicts,
              "target": {"peak_rss_mb_below": TARGET_PEAK_MB, "peak_rss_mb": peak,
                         "growth_tolerance_mb": GROWTH_TOLERANCE_MB, "flat": flat,
                         "met": peak < TARGET_PEAK_MB and flat},
              "method": "fresh `docqa ingest` process per run; VmHWM from /proc at the end of the ingest; "
                        "curve from VmRSS sampled every 0.1 s",
              "machine": info}
    name = "memory_quick" if args.quick else "memory"
    write_result(name, result)
    plot(runs, Path(__file__).resolve().parent / "results" / f"{name}.png")
    print(f"peak {peak:.0f} MB (< {TARGET_PEAK_MB}); growth " +
          ", ".join(f"{b} {v['growth_mb_shortest_to_longest']:+.1f} MB" for b, v in verdicts.items()) +
          f": {'met' if result['target']['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
