"""The re-rank that gives static-tier searches most of the transformer's quality back at query time."""

from __future__ import annotations

from typing import Any

import numpy as np

# With the static tier, re-ranking this many results by the transformer brings hybrid recall@10 on the
# NQ-oracle corpus to 0.988 against the transformer's own 0.996 (30: 0.984, none: 0.961;
# benchmarks/embedding_tiers.py). Each cold search then embeds up to this many chunks (~1.2 s on 2 cores).
DEFAULT_RERANK_DEPTH = 50


class Reranker:
    """Re-orders the head of a ranking by the full transformer's cosine to the query.

    The static tier trades retrieval quality for ingest speed; this buys most of it back at query
    time by embedding only the top candidates (chunk texts, cached by content hash, so paging and
    related queries reuse them) with the transformer the static model was distilled from.
    """

    def __init__(self, embedder: Any, batch_size: int = 32, cache_size: int = 20_000) -> None:
        from collections import OrderedDict

        self.embedder = embedder
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def rerank(self, query: str, candidates: list[tuple[str, str, str]]) -> list[tuple[str, float]]:
        """(id, cosine) best first, for candidates given as (id, content_hash, text); stable on ties."""
        if not candidates:
            return []
        missing = {digest: text for _, digest, text in candidates if digest not in self.cache}
        if missing:
            vectors = self.embedder.embed(list(missing.values()), self.batch_size)
            for digest, vector in zip(missing, vectors, strict=True):
                self.cache[digest] = vector
        for _, digest, _ in candidates:
            self.cache.move_to_end(digest)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        query_vector = self.embedder.embed([query])[0]
        scores = np.stack([self.cache[digest] for _, digest, _ in candidates]) @ query_vector
        order = sorted(range(len(candidates)), key=lambda k: (-float(scores[k]), k))
        return [(candidates[k][0], float(scores[k])) for k in order]
