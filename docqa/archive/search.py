"""Search over archival memory: the dense, lexical and hybrid rankings, the re-rank, and their pages.

`Searching.search` is the one search behind `docqa search` and the agent's `archival_memory_search`:
a fixed-depth ranking (dense, lexical, or both fused: see docqa.archive.fusion) cut into pages, so that
consecutive pages cover it with no gaps and no repeats.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

from docqa.archive.catalog import Catalog
from docqa.archive.health import REPAIR, StoreDamaged
from docqa.archive.fusion import add_identifier_bonuses, fuse, lexical_bonuses, one_core_less
from docqa.archive.records import SEARCH_MODES, SearchHit, SearchPage, StoreError, valid_utf8
from docqa.embeddings.load import load_embedder
from docqa.settings import Settings


class Searching:
    """The search half of ArchivalStore (which gives it settings, catalog, embedders and Chroma calls)."""

    settings: Settings
    catalog: Catalog
    _embedder: Any
    _rankings: OrderedDict[tuple, list[tuple[str, float]]]
    _chroma_seen: int | None
    _reader_seen: int | None
    chroma_dir: Path
    catalog_name = "the catalog"  # how errors name it (ArchivalStore: its file)

    _query_embedder: Any = None
    _counted_whole = -1  # the catalog's chunk count when Chroma's count last showed it holds them all

    @property
    def query_embedder(self) -> Any:
        """What embeds queries: the transformer's fast query path when one was checked (numpy, or its ONNX
        export: no torch import, so a cold search is ~0.2 s instead of 5-10 s), else the store's embedder. An
        embedder given to the store is always used as is."""
        if self._query_embedder is None:
            fast = None
            if self._embedder is None and self.settings.embedding_backend == "torch":
                from docqa.embeddings.load import load_query_embedder

                fast = load_query_embedder(self.settings.embedding_model)
            if fast is None and self._embedder is None and self.settings.embedding_backend == "torch":
                # No export yet (a store made before there was one): torch is loaded for this query anyway,
                # so make it now for the next process.
                from docqa.embeddings.load import prepare_query_embedder

                prepare_query_embedder(self.embedder)
            self._query_embedder = fast or self.embedder
        return self._query_embedder

    def query_path_pending(self) -> bool:
        """Whether prepare_query_path would export the transformer now (it takes 5-15 s, once)."""
        if self._embedder is None or self._embedder.backend != "torch":
            return False
        from docqa.embeddings.load import query_export_pending

        return query_export_pending(self._embedder)

    def prepare_query_path(self) -> None:
        """If this process loaded the transformer, export it for fast queries (once per model and machine)."""
        if self._embedder is not None and self._embedder.backend == "torch":
            from docqa.embeddings.load import prepare_query_embedder

            prepare_query_embedder(self._embedder)

    def search(self, query: str, page: int = 0, page_size: int | None = None, mode: str = "hybrid") -> SearchPage:
        """One page of the ranking for `query`; page 0 is the best results."""
        size = page_size or self.settings.page_size
        query = valid_utf8(query)
        if mode not in SEARCH_MODES:
            raise StoreError(f"unknown search mode '{mode}': use one of {', '.join(SEARCH_MODES)}")
        if page < 0 or size < 1:
            raise StoreError("page must be >= 0 and page size >= 1")
        ranking = self.ranking(query, mode)
        window = ranking[page * size : (page + 1) * size]
        records = self.catalog.records([chunk_id for chunk_id, _ in window])
        lost = [i for i, _ in window if i not in records]
        if lost and self.catalog.committed(lost):  # not a version a concurrent write just replaced
            raise StoreDamaged(f"{self.catalog_name} has lost chunks of committed documents (e.g. {lost[0]}): "
                               f"{REPAIR} to rebuild it")
        hits = [SearchHit(records[i], score) for i, score in window if i in records]
        return SearchPage(query, page, size, len(ranking), hits, depth=self.settings.search_depth)

    def ranking(self, query: str, mode: str = "hybrid") -> list[tuple[str, float]]:
        """The whole fixed-depth ranking, (chunk id, score) best first; cached so paging is cheap."""
        query = valid_utf8(query)
        key = (query, mode, self.catalog.version())
        if key in self._rankings:
            self._rankings.move_to_end(key)
            return self._rankings[key]
        depth = self.settings.search_depth
        if mode == "dense":
            ranking = self._dense(query, depth)
        elif mode == "lexical":
            ranking = [(chunk_id, 1.0 / (rank + 1)) for rank, chunk_id in
                       enumerate(self.catalog.lexical(query, depth))]
        else:
            lexical_job = self._lexical_in_background(query, depth)
            with one_core_less() if lexical_job else contextlib.nullcontext():
                dense = self._dense(query, depth)
            lexical = lexical_job.result() if lexical_job else self._lexical(query, depth)
            ranking = fuse(dense, lexical, depth)
        if mode != "lexical" and self.rerank_depth:
            ranking = self._rerank(query, ranking, lexical if mode == "hybrid" else None)
        self._rankings[key] = ranking
        while len(self._rankings) > 64:
            self._rankings.popitem(last=False)
        return ranking

    _pool: Any = None  # one worker thread for the lexical half of hybrid searches, made on first use

    def _lexical_in_background(self, query: str, depth: int) -> Any:
        """Start the lexical search in a thread while the caller embeds the query and asks Chroma (SQLite
        and torch both release the GIL): at 100k chunks this takes ~10 ms off a hybrid search. Local
        stores only (the catalog gives lexical search its own SQLite connection)."""
        if self.settings.chroma_url:
            return None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="docqa-lexical")
        return self._pool.submit(self._lexical, query, depth)

    def _lexical(self, query: str, depth: int) -> list[tuple[str, float]]:
        """The lexical ranking as (chunk id, bonus): what each match adds to its cosine in hybrid search
        (docqa.archive.fusion.lexical_bonuses; a catalog without BM25, a Chroma server's, scores 1/rank)."""
        hits = self.catalog.lexical_scores(query, depth)
        return add_identifier_bonuses(lexical_bonuses(hits), self.catalog.identifier_matches(query) if hits else [])

    # -- re-rank (the static tier's quality at query time) ----------------------------------------
    _reranker: Any = None  # a docqa.archive.rerank.Reranker, made on first use

    @property
    def rerank_depth(self) -> int:
        depth = self.settings.rerank_depth
        if depth is None:
            from docqa.archive.rerank import DEFAULT_RERANK_DEPTH

            depth = DEFAULT_RERANK_DEPTH if self.settings.embedding_backend == "static" else 0
        return max(0, min(depth, self.settings.search_depth))

    @property
    def reranker(self) -> Any:
        if self._reranker is None:
            from docqa.archive.rerank import Reranker
            from docqa.embeddings.load import load_query_embedder

            # The transformer's fast query path embeds the same vectors without importing torch.
            transformer = load_query_embedder(self.settings.embedding_model)
            if transformer is None:
                from docqa.embeddings.load import prepare_query_embedder

                transformer = load_embedder(self.settings.embedding_model, "torch")
                prepare_query_embedder(transformer)  # torch is loaded now: spare the next process
            self._reranker = Reranker(transformer, self.settings.batch_size)
        return self._reranker

    def _rerank(self, query: str, ranking: list[tuple[str, float]],
                lexical: list[tuple[str, float]] | None) -> list[tuple[str, float]]:
        """The top rerank_depth results re-ordered by the transformer (the rest follow unchanged).

        Dense: by the transformer's cosine (which becomes their score). Hybrid: the transformer's cosines
        of these candidates fused with their lexical matches, as hybrid search with the transformer does;
        ordering by cosine alone would bury exact matches the transformer cannot read (UUID keys).
        """
        head = ranking[: self.rerank_depth]
        records = self.catalog.records([chunk_id for chunk_id, _ in head])
        candidates = [(i, records[i].content_hash, records[i].text) for i, _ in head if i in records]
        reordered = self.reranker.rerank(query, candidates)
        if lexical is not None:
            kept = {chunk_id for chunk_id, _ in reordered}
            reordered = fuse(reordered, [hit for hit in lexical if hit[0] in kept], len(reordered))
        return reordered + ranking[len(head):]

    def _dense(self, query: str, depth: int) -> list[tuple[str, float]]:
        # Nothing committed, nothing to find. (The catalog's count is free; Chroma's count() cost ~15 ms a
        # search at 100k chunks, and Chroma simply returns fewer results when it holds fewer.)
        total = self.catalog.total_chunks()
        if not query.strip() or not total:
            return []
        vector = self.query_embedder.embed([query]).tolist()
        for attempt in (1, 2):
            try:
                # Ask past `depth`: uncommitted chunks of a concurrent ingest are dropped below.
                ids, distances = self.nearest(vector, depth + 64)
            except Exception as exc:
                if not self.settings.chroma_url:  # a local store's Chroma raises StoreErrors (see ArchivalStore)
                    if attempt == 2 or not isinstance(exc, StoreDamaged):
                        raise
                    self._chroma_seen = self._reader_seen = None  # a fresh client reads the index from disk again
                    continue
                from chromadb.errors import ChromaError  # here, not above: importing chromadb costs ~0.9 s

                if not isinstance(exc, ChromaError):
                    raise
                raise StoreError(f"the Chroma server at {self.settings.chroma_url} failed a query ({exc}): "
                                 "check its log") from None
            # Chroma holds every committed chunk (they reach it before their commit), so a query finds as many
            # as it asks for, up to the catalog's count. Fewer: Chroma may have lost vectors (its directory
            # deleted or emptied) and says nothing; look once more, then count what it holds. (The search is
            # approximate: among many identical vectors, a run of text repeated, it finds fewer than asked
            # with every vector in place; that is no damage.)
            wanted = min(depth + 64, total)
            if self.settings.chroma_url or len(ids) >= wanted or self._counted_whole == total:
                break
            if attempt == 2:
                with self._chroma() as collection:
                    held = collection.count()
                if held >= total:
                    self._counted_whole = total
                    break
                raise StoreDamaged(f"the vector index in {self.chroma_dir} holds fewer chunks than the catalog "
                                   f"({held} of {total}): {REPAIR}: it rebuilds the vectors from the catalog")
            self._chroma_seen = self._reader_seen = None  # a write may have been under way: read it again
            total = self.catalog.total_chunks()
        committed = self.catalog.committed(ids)
        return [(i, 1.0 - d) for i, d in zip(ids, distances, strict=True) if i in committed][:depth]
