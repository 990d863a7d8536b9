"""Shared helpers for the benchmarks: machine info, result files, plots, the benchmark corpora, percentiles."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from docqa.cli.process import configure_process

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
NQ_DATA = ROOT / "data" / "nq_open" / "nq-open-oracle.jsonl.gz"
KV_DATA = ROOT / "data" / "nested_kv" / "kv-retrieval-140_keys.first.jsonl.gz"

# Benchmarks run docqa's code in the process the `docqa` command would make: offline model loads, passive
# OpenMP waits (set before anything imports torch), torch's threads tuned during hybrid searches.
configure_process()


def machine() -> dict[str, Any]:
    """Where and under what load a result was measured (figures are ratios within one run)."""
    cpu = platform.processor() or ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu.strip():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for package in ("docqa", "torch", "sentence-transformers", "transformers", "model2vec", "chromadb", "pypdf",
                    "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    import sqlite3

    versions["sqlite"] = sqlite3.sqlite_version
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "simd": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma"}),
        "torch_threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, **payload}
    payload.setdefault("machine", machine())
    payload["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


@contextlib.contextmanager
def plot_to(path: Path, title: str, xlabel: str, ylabel: str, legend_loc: str = "best") -> Iterator[Axes]:
    """Axes to draw one benchmark's plot on; on leaving the block it gets its labels, legend and grid
    and is written to path as a PNG (nothing is written if the block raises)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: benchmarks run headless (CI, ssh)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, loc=legend_loc)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")
    finally:
        plt.close(fig)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds."""
    ms = np.asarray(samples_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": len(ms)}


def nq_questions() -> list[dict[str, Any]]:
    """NQ-open oracle records: question, answers, gold passage (title, text)."""
    out = []
    with gzip.open(NQ_DATA, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            ctx = record["ctxs"][0]
            out.append({"question": record["question"], "title": " ".join(ctx["title"].split()),
                        "text": " ".join(ctx["text"].split())})
    return out


def passage_text(title: str, text: str) -> str:
    return f"{title}\n{text}"


def kv_pairs() -> list[tuple[str, str]]:
    with gzip.open(KV_DATA, "rt", encoding="utf-8") as handle:
        record = json.loads(handle.readline())
    return [(k, v) for k, v in record["ordered_kv_records"]]


def kv_passage(key: str, value: str) -> str:
    return f"Key-value pair: key = {key}, value = {value}"


def store_of(settings: Any, embedder: Any, texts: list[str], vectors: np.ndarray, source: str = "/bench/corpus.txt",
             batch: int = 256) -> Any:
    """A store holding `texts` as one document, one chunk each, with these vectors (no model run)."""
    from docqa.archive.store import ArchivalStore
    from docqa.chunking import Chunk

    store = ArchivalStore(settings, embedder)
    file_hash = "a" * 64
    with store.writing():
        generation = store.begin_document(source, file_hash)
        chunks = [Chunk(i, text, i + 1, i + 1, 0) for i, text in enumerate(texts)]
        for start in range(0, len(chunks), batch):
            store.add_chunks(generation, source, chunks[start : start + batch], vectors[start : start + batch])
        store.commit_document(source, generation, file_hash, len(chunks), len(chunks))
    return store


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start
