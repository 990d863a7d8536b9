"""Search latency and scale: `archival_memory_search` on stores of 10k and 100k (optionally 1M) chunks.

    python benchmarks/search_scale.py                  # 10k and 100k chunks (about 10 minutes)
    python benchmarks/search_scale.py --quick          # 2k and 10k chunks, under 2 minutes
    python benchmarks/search_scale.py --sizes 1000000  # writes results/search_scale_1M.json

Texts are real: the NQ-open gold Wikipedia passages, repeated with variations (sentences rotated, one
dropped, a copy number added) so that the lexical index sees a real vocabulary and real document
frequencies at every size. Vectors are synthetic (384-d, like MiniLM): a random centre per distinct
passage plus noise per copy, unit length. Queries are NQ-open questions embedded by the real MiniLM,
so latency includes the query embedding, as a user's search does.

Each query is used once per measurement, so every search is cold: `ArchivalStore.ranking` caches a
query's ranking (paging through it afterwards is a slice), and that cache is never hit here except in
the row "warm page 10", which pages on through a ranking computed just before.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Timer,
    dir_size,
    machine,
    nq_questions,
    passage_text,
    percentiles,
    plot_to,
    write_result,
)

TARGET_P50_MS = 25.0
TARGET_PAGE10_RATIO = 2.0
DIM = 384
BATCH = 128  # the ingest pipeline's store batch (4 x the embedding batch size)


def corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n chunk texts (real words) and n synthetic unit vectors."""
    records = nq_questions()
    base = list(dict.fromkeys(passage_text(r["title"], r["text"]) for r in records))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(base), DIM)).astype(np.float32)
    texts: list[str] = []
    vectors = np.empty((n, DIM), dtype=np.float32)
    for i in range(n):
        copy, j = divmod(i, len(base))
        text = base[j]
        if copy:
            sentences = text.split(". ")
            shift = copy % len(sentences)
            sentences = sentences[shift:] + sentences[:shift]
            if len(sentences) > 2:
                del sentences[(copy * 7) % len(sentences)]
            text = f"(copy {copy}) " + ". ".join(sentences)
        texts.append(text)
        vectors[i] = centres[j] + 0.35 * rng.standard_normal(DIM).astype(np.float32) * (copy > 0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors


def build(store_dir: Path, texts: list[str], vectors: np.ndarray, embedder) -> tuple[object, float]:
    """A store holding `texts` as one document per 1,000 chunks; returns (store, insert seconds)."""
    from docqa.archive.store import ArchivalStore
    from docqa.chunking import Chunk
    from docqa.settings import Settings

    store = ArchivalStore(Settings(store_dir=store_dir), embedder)
    with Timer() as timer, store.writing():
        for doc_start in range(0, len(texts), 1000):
            source = f"/bench/doc-{doc_start // 1000:05d}.pdf"
            file_hash = f"{doc_start:064d}"
            generation = store.begin_document(source, file_hash)
            doc_texts = texts[doc_start : doc_start + 1000]
            chunks = [Chunk(i, t, 1 + i // 4, 1 + i // 4, len(t.split())) for i, t in enumerate(doc_texts)]
            doc_vectors = vectors[doc_start : doc_start + len(chunks)]
            for start in range(0, len(chunks), BATCH):
                store.add_chunks(generation, source, chunks[start : start + BATCH],
                                 doc_vectors[start : start + BATCH])
            store.commit_document(source, generation, file_hash, 1 + len(chunks) // 4, len(chunks))
    return store, timer.seconds


def measure(store, queries: list[str], mode: str, page: int) -> list[float]:
    samples = []
    for query in queries:
        started = time.perf_counter()
        store.search(query, page=page, mode=mode)
        samples.append(time.perf_counter() - started)
    return samples


def breakdown(store, queries: list[str]) -> dict[str, dict[str, float]]:
    """Where a cold hybrid search spends its time, stage by stage, one after the other (a hybrid search
    runs the lexical stage in a thread meanwhile the others, with torch on one core less)."""
    depth = store.settings.search_depth
    parts: dict[str, list[float]] = {"embed_query": [], "chroma_query": [], "committed_filter": [],
                                     "lexical": []}
    for query in queries:
        t0 = time.perf_counter()
        vector = store.embedder.embed([query])
        t1 = time.perf_counter()
        with store._chroma() as collection:
            result = collection.query(query_embeddings=vector, n_results=depth + 64, include=["distances"])
        t2 = time.perf_counter()
        store.catalog.committed(result["ids"][0])
        t3 = time.perf_counter()
        store.catalog.lexical(query, depth)
        t4 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[name].append(seconds)
    return {name: percentiles(samples) for name, samples in parts.items()}


def profile_hybrid(store, queries: list[str]) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for query in queries:
        store.search(query + " ?", mode="hybrid")  # a new string: a cold ranking
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def built_store(n: int, embedder, workdir: Path) -> tuple[Path, dict]:
    """The store of n chunks in workdir, built unless a finished build is there (--keep); its build record."""
    store_dir = workdir / f"store-{n}"
    record_file = store_dir / "bench-build.json"
    if record_file.exists():
        print(f"{n:>9,} chunks: reusing the store built in {store_dir}")
        return store_dir, json.loads(record_file.read_text())
    shutil.rmtree(store_dir, ignore_errors=True)
    texts, vectors = corpus(n)
    load_before = os.getloadavg()
    store, insert_s = build(store_dir, texts, vectors, embedder)
    store.catalog.close()
    record = {"insert_seconds": round(insert_s, 2),
              "load_average_during_build": [round(x, 2) for x in (load_before[0], os.getloadavg()[0])]}
    record_file.write_text(json.dumps(record) + "\n")
    return store_dir, record


def run_size(n: int, questions: list[str], n_queries: int, embedder, workdir: Path) -> dict:
    store_dir, build_record = built_store(n, embedder, workdir)
    insert_s = build_record["insert_seconds"]
    # Search as a user would: a store opened afresh, with nothing of the build still in memory.
    gc.collect()
    from docqa.archive.store import ArchivalStore
    from docqa.settings import Settings

    store = ArchivalStore(Settings(store_dir=store_dir), embedder)
    size = dir_size(store_dir)
    print(f"{n:>9,} chunks: inserted in {insert_s:.1f} s ({n / insert_s:,.0f} chunks/s), {size / 1e6:,.1f} MB on disk")
    # Disjoint query sets: every measured search is a cold ranking.
    sets = [questions[k * n_queries : (k + 1) * n_queries] for k in range(5)]
    measure(store, [q + " warm-up" for q in questions[-10:]], "hybrid", 0)
    rows = {}
    for label, mode, page, qs in (("hybrid_page0", "hybrid", 0, sets[0]), ("hybrid_page10", "hybrid", 10, sets[1]),
                                  ("dense_page0", "dense", 0, sets[2]), ("dense_page10", "dense", 10, sets[3]),
                                  ("lexical_page0", "lexical", 0, sets[4])):
        rows[label] = percentiles(measure(store, qs, mode, page))
    # Warm: page 10 right after page 0 of the same query (the agent paging on through one search).
    warm = []
    for query in sets[0]:
        store.search(query + " (warm)", page=0, mode="hybrid")
        warm.extend(measure(store, [query + " (warm)"], "hybrid", 10))
    rows["hybrid_page10_warm"] = percentiles(warm)
    for label, row in rows.items():
        print(f"    {label:<20} p50 {row['p50_ms']:7.2f} ms   p95 {row['p95_ms']:7.2f} ms")
    stages = breakdown(store, [q + " (stage)" for q in sets[0]])
    print("    hybrid stages p50: " + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in stages.items()))
    result = {"chunks": n, "insert_seconds": round(insert_s, 2), "insert_chunks_per_s": round(n / insert_s, 1),
              "load_average_during_build": build_record["load_average_during_build"],
              "disk_bytes": size, "disk_mb": round(size / 1e6, 1), "latency": rows, "hybrid_stages": stages,
              "page10_over_page0_hybrid": round(rows["hybrid_page10"]["p50_ms"] / rows["hybrid_page0"]["p50_ms"], 3),
              "page10_over_page0_dense": round(rows["dense_page10"]["p50_ms"] / rows["dense_page0"]["p50_ms"], 3)}
    if rows["hybrid_page0"]["p50_ms"] > TARGET_P50_MS:
        result["profile_hybrid_cold"] = profile_hybrid(store, sets[0][:50])
    store.catalog.close()
    return result


def plot(results: list[dict], path: Path) -> None:
    sizes = [r["chunks"] for r in results]
    with plot_to(path, "docqa archival_memory_search latency", "chunks in store",
                 "latency per search (ms, cold)") as ax:
        for label, style in (("hybrid_page0", "o-"), ("hybrid_page10", "o--"), ("dense_page0", "s-"),
                             ("dense_page10", "s--"), ("lexical_page0", "^-")):
            ax.plot(sizes, [r["latency"][label]["p50_ms"] for r in results], style, label=f"{label} p50")
        ax.plot(sizes, [r["latency"]["hybrid_page0"]["p95_ms"] for r in results], "o:", color="grey",
                label="hybrid_page0 p95")
        ax.axhline(TARGET_P50_MS, color="red", linewidth=0.8, linestyle=":", label="target hybrid p50")
        ax.set_xscale("log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k and 10k chunks, 40 queries per row")
    parser.add_argument("--sizes", type=int, nargs="+", help="store sizes (default 10000 100000)")
    parser.add_argument("--queries", type=int, help="distinct queries per row (default 200, quick 40)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the stores in DIR and keep them; a later run with the same DIR reuses them")
    parser.add_argument("--build-only", action="store_true",
                        help="with --keep: build the stores now, measure in a later run (e.g. on a quiet machine)")
    args = parser.parse_args(argv)
    if args.build_only and not args.keep:
        parser.error("--build-only needs --keep DIR")
    sizes = args.sizes or ([2_000, 10_000] if args.quick else [10_000, 100_000])
    n_queries = args.queries or (40 if args.quick else 200)
    info = machine()
    print(f"load average at start: {info['load_average']}")

    from docqa.embeddings.load import load_embedder

    embedder = load_embedder()
    questions = list(dict.fromkeys(r["question"] for r in nq_questions()))
    np.random.default_rng(1).shuffle(questions)
    results = []
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="docqa-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            if args.build_only:
                built_store(n, embedder, workdir)
            else:
                results.append(run_size(n, questions, n_queries, embedder, workdir))
    if args.build_only:
        return 0
    name = "search_scale_quick" if args.quick else "search_scale"
    if args.sizes:  # other sizes go to their own file, beside the default run's
        name += "_" + "_".join(f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0
                               else str(n) for n in sizes)
    at = next((r for r in results if r["chunks"] == 100_000), None)
    target = {"hybrid_page0_p50_ms_at_100k_at_most": TARGET_P50_MS,
              "page10_within_x_of_page0": TARGET_PAGE10_RATIO}
    if at:
        p50 = at["latency"]["hybrid_page0"]["p50_ms"]
        ratio = at["page10_over_page0_hybrid"]
        target.update({"hybrid_page0_p50_ms": p50, "page10_ratio": ratio, "met": p50 <= TARGET_P50_MS and
                       ratio <= TARGET_PAGE10_RATIO})
    else:
        target["met"] = None
        target["note"] = "no 100k store in this run (use the full form)"
    payload = {"quick": args.quick, "queries_per_row": n_queries,
               "method": {"texts": "NQ-open gold passages repeated with variations",
                          "vectors": f"synthetic {DIM}-d unit vectors (centre per passage + noise per copy)",
                          "queries": "distinct NQ-open questions, embedded by all-MiniLM-L6-v2 (torch) per search",
                          "cold": "each query string is searched once per row: no ranking-cache hits except "
                                  "hybrid_page10_warm", "page_size": 5, "search_depth": 200},
               "sizes": results, "target": target, "machine": info}
    write_result(name, payload)
    plot(results, Path(__file__).resolve().parent / "results" / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
