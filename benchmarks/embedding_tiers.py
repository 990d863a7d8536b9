"""Embedding tiers: the static (model2vec) tier against MiniLM, for ingest speed and retrieval quality.

    python benchmarks/embedding_tiers.py            # full NQ-oracle corpus, 200-page PDF (about 15 minutes)
    python benchmarks/embedding_tiers.py --quick    # 300 passages, 20 pages, under 2 minutes on an idle machine

In one run:
- Ingest speed: `Ingestor.run` of the same long PDF (benchmarks/make_long_pdf.py) into a fresh store
  with each tier (the model is loaded before timing), and the embedding of the NQ-oracle passages alone.
- Retrieval quality on the NQ-oracle corpus (the union of the 2,655 questions' gold passages, 2,588
  distinct, one chunk each; every question asks for its gold passage): recall@1/@10 for dense and
  hybrid search with each tier, and with the static tier re-ranked by MiniLM at query time at
  several depths (ArchivalStore's rerank_depth; the default for the static tier is marked).
- Nested-KV keys (the MemGPT paper's 140 UUID pairs, one chunk each, `Key-value pair: key = K, value = V`):
  the share of keys whose pair is the first hit when searching for the key.
- Search latency with the re-rank, from a cold re-rank cache (it embeds the candidates with MiniLM).

The re-rank's recall figures are computed with its cache seeded from the MiniLM vectors of the same
chunk texts (identical to what it would compute, checked on a sample), so that thousands of queries do
not each pay for embedding 30 passages; its latency is measured separately, cold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    Timer,
    kv_pairs,
    kv_passage,
    machine,
    nq_questions,
    passage_text,
    percentiles,
    plot_to,
    store_of,
    write_result,
)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TARGET_SPEEDUP = 10.0
TARGET_RECALL_GAP = 0.02
DEPTHS = (0, 10, 20, 30, 40, 50)


class MemoEmbedder:
    """Wraps an Embedder, remembering single-query embeddings (many rankings share each question)."""

    def __init__(self, embedder: Any) -> None:
        self.inner = embedder
        self.memo: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if len(texts) == 1:
            if texts[0] not in self.memo:
                self.memo[texts[0]] = self.inner.embed(texts, batch_size)
            return self.memo[texts[0]]
        return self.inner.embed(texts, batch_size)


def build_store(store_dir: Path, backend: str, embedder: Any, texts: list[str], vectors: np.ndarray) -> Any:
    from docqa.settings import Settings

    settings = Settings(store_dir=store_dir, embedding_backend=backend, rerank_depth=0)
    return store_of(settings, embedder, texts, vectors, source="corpus", batch=500)


def with_rerank(store: Any, depth: int, reranker: Any) -> Any:
    """Another view of the same store, re-ranking `depth` results (own ranking cache)."""
    from docqa.archive.store import ArchivalStore

    view = ArchivalStore(store.settings.with_(rerank_depth=depth), store.embedder)
    view._reranker = reranker
    return view


def gold_ranks(store: Any, queries: list[str], gold: list[int], mode: str) -> np.ndarray:
    generation = store.documents()[0].generation
    ranks = []
    for query, target in zip(queries, gold, strict=True):
        ids = [chunk_id for chunk_id, _ in store.ranking(query, mode)]
        wanted = f"{generation}:{target}"
        ranks.append(ids.index(wanted) if wanted in ids else 10**6)
    return np.asarray(ranks)


def recall(ranks: np.ndarray) -> dict[str, float]:
    return {"recall@1": round(float((ranks < 1).mean()), 4), "recall@10": round(float((ranks < 10).mean()), 4),
            "recall@50": round(float((ranks < 50).mean()), 4)}


def ingest_pdf(pdf: Path, store_dir: Path, backend: str, embedder: Any) -> dict:
    from docqa.archive.store import ArchivalStore
    from docqa.ingest.pipeline import Ingestor
    from docqa.settings import Settings

    store = ArchivalStore(Settings(store_dir=store_dir, embedding_backend=backend), embedder)
    with Timer() as timer:
        report = Ingestor(store, progress=False, notice=print).run([pdf])
    return {"seconds": round(timer.seconds, 3), "pages": report.pages, "chunks": report.chunks_added,
            "pages_per_s": round(report.pages / timer.seconds, 2),
            "chunks_per_s": round(report.chunks_added / timer.seconds, 2)}


def plot(results: dict, path: Path) -> None:
    nq = results["nq_oracle"]
    with plot_to(path, "Static tier: recall@10 against re-rank depth",
                 "re-rank depth (top results re-scored by MiniLM at query time)", "recall@10, NQ-oracle",
                 legend_loc="lower right") as ax:
        for mode, colour in (("hybrid", "C0"), ("dense", "C1")):
            ys = [nq[f"static_{mode}_rerank{d}"]["recall@10"] for d in DEPTHS]
            ax.plot(DEPTHS, ys, "o-", color=colour, label=f"static {mode} + MiniLM re-rank")
            ax.axhline(nq[f"torch_{mode}"]["recall@10"], color=colour, linestyle="--", linewidth=1,
                       label=f"MiniLM {mode}")
        ax.axhline(nq["torch_hybrid"]["recall@10"] - TARGET_RECALL_GAP, color="red", linestyle=":", linewidth=0.8,
                   label="target (MiniLM hybrid - 2 points)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 passages, 150 of their questions, a 20-page PDF")
    parser.add_argument("--pages", type=int, help="PDF length for the ingest comparison (default 200, quick 20)")
    args = parser.parse_args(argv)
    pages = args.pages or (20 if args.quick else 200)
    info = machine()
    print(f"load average at start: {info['load_average']}")

    from docqa.archive.rerank import DEFAULT_RERANK_DEPTH, Reranker
    from docqa.embeddings.cache import use_cache_dir
    from docqa.embeddings.load import load_embedder
    from docqa.embeddings.static import cache_dir
    from docqa.embeddings.transformer import model_location

    if not args.quick:
        # The full run pays the static model's one-time distillation too: a fresh cache.
        fresh_cache = Path(tempfile.mkdtemp(prefix="docqa-bench-cache-"))
        use_cache_dir(fresh_cache)
    with Timer() as torch_load:
        torch_embedder = load_embedder(MODEL, "torch")
    static_cached = (cache_dir(Path(model_location(MODEL))) / "vectors.npy").exists()
    with Timer() as static_load:
        static_embedder = load_embedder(MODEL, "static")
    print(f"models: torch {torch_load.seconds:.1f} s, static {static_load.seconds:.1f} s "
          f"({'from cache' if static_cached else 'distilled now'})")

    records = nq_questions()
    if args.quick:
        records = records[:300]
    texts = list(dict.fromkeys(passage_text(r["title"], r["text"]) for r in records))
    index = {text: i for i, text in enumerate(texts)}
    queries = [r["question"] for r in records]
    gold = [index[passage_text(r["title"], r["text"])] for r in records]
    if args.quick:
        queries, gold = queries[:150], gold[:150]
    result: dict[str, Any] = {"quick": args.quick, "model": MODEL,
                              "static_model": {"load_seconds": round(static_load.seconds, 2),
                                               "distilled_in_this_run": not static_cached,
                                               "dimension": static_embedder.dimension,
                                               "recipe": "model2vec distill recipe (mean pooling of each token "
                                                         "alone through MiniLM, PCA 256, SIF 1e-4), written "
                                                         "out in docqa/embeddings/static.py"}}

    with tempfile.TemporaryDirectory(prefix="docqa-bench-") as tmp:
        workdir = Path(tmp)
        # -- ingest speed -----------------------------------------------------------------------
        import subprocess

        pdf = workdir / f"long-{pages}.pdf"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_long_pdf.py"), str(pdf), "--pages",
                        str(pages)], check=True, stdout=subprocess.DEVNULL)
        ingest = {"static": ingest_pdf(pdf, workdir / "pdf-static", "static", static_embedder),
                  "torch": ingest_pdf(pdf, workdir / "pdf-torch", "torch", torch_embedder)}
        ingest["speedup"] = round(ingest["torch"]["seconds"] / ingest["static"]["seconds"], 2)
        print(f"ingest {pages}-page PDF: torch {ingest['torch']['seconds']:.1f} s, static "
              f"{ingest['static']['seconds']:.1f} s: {ingest['speedup']:.1f}x")
        with Timer() as static_embed:
            static_vectors = static_embedder.embed(texts)
        with Timer() as torch_embed:
            torch_vectors = torch_embedder.embed(texts)
        ingest["embed_nq_passages"] = {
            "passages": len(texts), "torch_seconds": round(torch_embed.seconds, 2),
            "static_seconds": round(static_embed.seconds, 3),
            "torch_per_s": round(len(texts) / torch_embed.seconds, 1),
            "static_per_s": round(len(texts) / static_embed.seconds, 1),
            "speedup": round(torch_embed.seconds / static_embed.seconds, 1)}
        print(f"embed {len(texts)} NQ passages: torch {torch_embed.seconds:.1f} s, static {static_embed.seconds:.2f} s")
        result["ingest"] = ingest

        # -- NQ-oracle retrieval ------------------------------------------------------------------
        memo_torch = MemoEmbedder(torch_embedder)
        torch_store = build_store(workdir / "nq-torch", "torch", memo_torch, texts, torch_vectors)
        static_store = build_store(workdir / "nq-static", "static", static_embedder, texts, static_vectors)
        from docqa.chunking import Chunk

        reranker = Reranker(memo_torch)
        for text, vector in zip(texts, torch_vectors, strict=True):
            reranker.cache[Chunk(0, text, 1, 1, 0).content_hash] = vector
        sample = [0, len(texts) // 2, len(texts) - 1]
        fresh = torch_embedder.embed([texts[i] for i in sample], 32)
        seeded_cos = float(min((fresh * torch_vectors[sample]).sum(axis=1)))
        nq: dict[str, Any] = {"passages": len(texts), "questions": len(queries),
                              "reranker_seed_min_cosine_to_fresh": round(seeded_cos, 6)}
        for mode in ("dense", "hybrid", "lexical"):
            nq[f"torch_{mode}"] = recall(gold_ranks(torch_store, queries, gold, mode))
        for depth in DEPTHS:
            view = with_rerank(static_store, depth, reranker)
            for mode in ("dense", "hybrid"):
                nq[f"static_{mode}_rerank{depth}"] = recall(gold_ranks(view, queries, gold, mode))
        nq["static_dense"], nq["static_hybrid"] = nq["static_dense_rerank0"], nq["static_hybrid_rerank0"]
        for key, value in nq.items():
            if isinstance(value, dict):
                print(f"  NQ {key:<26} r@1 {value['recall@1']:.3f}  r@10 {value['recall@10']:.3f}")
        result["nq_oracle"] = nq

        # -- re-rank latency, cold -----------------------------------------------------------------
        latency: dict[str, Any] = {}
        probe = [q + " ?" for q in queries[-30:]]  # not searched before: cold rankings
        for label, store in (("torch_hybrid", with_rerank(torch_store, 0, None)),
                             ("static_hybrid", with_rerank(static_store, 0, None)),
                             (f"static_hybrid_rerank{DEFAULT_RERANK_DEPTH}",
                              with_rerank(static_store, DEFAULT_RERANK_DEPTH, Reranker(torch_embedder)))):
            samples = []
            for query in probe:
                started = time.perf_counter()
                store.search(query, mode="hybrid")
                samples.append(time.perf_counter() - started)
            latency[label] = percentiles(samples)
            print(f"  search latency {label:<24} p50 {latency[label]['p50_ms']:.1f} ms")
        latency["note"] = ("cold: new query strings, empty re-rank cache; store of "
                           f"{len(texts)} chunks; includes query embedding(s)")
        result["search_latency"] = latency

        # -- nested-KV keys ------------------------------------------------------------------------
        pairs = kv_pairs()
        kv_texts = [kv_passage(k, v) for k, v in pairs]
        kv: dict[str, Any] = {"pairs": len(pairs), "query": "the key itself"}
        for backend, embedder in (("torch", torch_embedder), ("static", static_embedder)):
            store = build_store(workdir / f"kv-{backend}", backend, embedder, kv_texts,
                                embedder.embed(kv_texts))
            keys = [k for k, _ in pairs]
            targets = list(range(len(pairs)))
            depths = (0,) if backend == "torch" else (0, DEFAULT_RERANK_DEPTH)
            for depth in depths:
                view = with_rerank(store, depth, Reranker(torch_embedder)) if depth else store
                suffix = f"_rerank{depth}" if depth else ""
                for mode in ("dense", "hybrid", "lexical"):
                    if mode == "lexical" and depth:
                        continue
                    ranks = gold_ranks(view, keys, targets, mode)
                    kv[f"{backend}_{mode}{suffix}"] = {"pair_first": round(float((ranks < 1).mean()), 4),
                                                       "recall@10": round(float((ranks < 10).mean()), 4)}
        for key, value in kv.items():
            if isinstance(value, dict):
                print(f"  KV {key:<26} pair first {value['pair_first']:.3f}")
        result["nested_kv"] = kv

    default = f"static_hybrid_rerank{DEFAULT_RERANK_DEPTH}"
    gap = nq["torch_hybrid"]["recall@10"] - nq[default]["recall@10"]
    result["target"] = {
        "tier": f"--embedding-backend static (re-rank depth {DEFAULT_RERANK_DEPTH} by default)",
        "ingest_speedup_at_least": TARGET_SPEEDUP, "ingest_speedup": ingest["speedup"],
        "hybrid_recall@10_gap_at_most": TARGET_RECALL_GAP, "hybrid_recall@10_gap": round(gap, 4),
        "static_hybrid_without_rerank_gap": round(nq["torch_hybrid"]["recall@10"] - nq["static_hybrid"]["recall@10"],
                                                  4),
        "met": ingest["speedup"] >= TARGET_SPEEDUP and gap <= TARGET_RECALL_GAP,
        "cost": f"each cold search embeds up to {DEFAULT_RERANK_DEPTH} chunks with MiniLM: see search_latency",
    }
    result["machine"] = info
    print(f"target: ingest {ingest['speedup']:.1f}x (>= {TARGET_SPEEDUP}), hybrid recall@10 gap {gap:+.3f} "
          f"(<= {TARGET_RECALL_GAP}): {'met' if result['target']['met'] else 'NOT met'}")
    name = "embedding_tiers_quick" if args.quick else "embedding_tiers"
    if not args.quick:
        import shutil

        shutil.rmtree(fresh_cache, ignore_errors=True)
    write_result(name, result)
    plot(result, Path(__file__).resolve().parent / "results" / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
