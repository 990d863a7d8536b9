"""The archival store: Chroma (embedded or a server) for vectors plus the catalog for truth and words.

`ArchivalStore.search` is the one search behind `docqa search` and the agent's `archival_memory_search`:
a fixed-depth ranking (dense, lexical, or both fused: see docqa.fusion) cut into pages, so that
consecutive pages cover it with no gaps and no repeats.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from docqa.catalog import Catalog, ChunkRecord, DocumentRow
from docqa.chunking import CHARS_PER_TOKEN, Chunk
from docqa.embeddings import Embedder, load_embedder
from docqa.fusion import add_identifier_bonuses, fuse, lexical_bonuses, one_core_less
from docqa.readers import is_paged, location
from docqa.settings import Settings

SEARCH_MODES = ("hybrid", "dense", "lexical")
# Chroma's rule for collection names; checked before anything is created (the catalog needs it too).
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,498}[A-Za-z0-9]")


class StoreError(Exception):
    """The store cannot do what was asked; str() says what to do."""


@dataclass(frozen=True)
class SearchHit:
    record: ChunkRecord
    score: float

    @property
    def pages(self) -> str:
        r = self.record
        return str(r.page_start) if r.page_start == r.page_end else f"{r.page_start}-{r.page_end}"

    @property
    def where(self) -> str:
        """"page 3", or "pages 3-4" for a chunk that spans a page break; for a non-paged document (HTML,
        DOCX, EPUB) its heading path and paragraphs, `section "Install > Linux" (paragraph 12)`."""
        r = self.record
        if not is_paged(r.source):
            return location(r.source, r.page_start, r.page_end, r.section)
        return f"page {self.pages}" if r.page_start == r.page_end else f"pages {self.pages}"

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {"text": r.text, "source": r.source, "page": r.page_start, "page_end": r.page_end,
                "section": r.section, "chunk": r.chunk, "id": r.id, "score": round(self.score, 6)}


@dataclass(frozen=True)
class SearchPage:
    query: str
    page: int
    page_size: int
    total: int
    hits: list[SearchHit] = field(default_factory=list)
    depth: int | None = None  # how deep the ranking went: a total this large means "at least this many"

    @property
    def num_pages(self) -> int:
        return math.ceil(self.total / self.page_size) if self.page_size else 0

    @property
    def total_label(self) -> str:
        """"37 results", or "the top 200 results" when the ranking stopped at its depth (there may be more)."""
        if self.depth is not None and self.total >= self.depth:
            return f"the top {self.total} results"
        return f"{self.total} results"

    def format(self, scores: bool = False) -> str:
        """The text the user and the agent see, headed like the paper's Figure 6."""
        if not self.hits:
            if self.total and self.page >= self.num_pages:
                return f"No results on page {self.page}: there are {self.num_pages} pages (0-{self.num_pages - 1})."
            return "No results found."
        lines = [f"Showing {len(self.hits)} of {self.total_label} (page {self.page}/{self.num_pages - 1}):"]
        for n, hit in enumerate(self.hits, start=self.page * self.page_size + 1):
            r = hit.record
            score = f", score {hit.score:.4f}" if scores else ""
            lines.append(f"[{n}] {r.source}, {hit.where} (chunk {r.chunk}{score}):\n{r.text.strip()}")
        return "\n\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "page": self.page, "num_pages": self.num_pages, "total": self.total,
                "total_is_depth": self.depth is not None and self.total >= self.depth,
                "results": [hit.to_json() for hit in self.hits]}


def generation_of(source: str, file_hash: str, chunking: str) -> str:
    """The id of one version of one document: its bytes, chunked and embedded one way (`chunking`, see
    ArchivalStore.chunking); chunk ids are `<generation>:<index>`."""
    version = hashlib.sha256(f"{file_hash}\n{chunking}".encode("utf-8", "surrogatepass")).hexdigest()
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:12] + version[:12]


class ArchivalStore:
    """Chroma + catalog behind one interface: write documents all-or-nothing, search in pages."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self._embedder = embedder
        self._rankings: OrderedDict[tuple, list[tuple[str, float]]] = OrderedDict()
        check_collection_name(settings.collection)
        if settings.chroma_url:
            from docqa.server_catalog import ServerCatalog, connect_server

            self.client = connect_server(settings.chroma_url)
            self.catalog: Any = ServerCatalog(self.client, settings.collection)
            self._open_collection()
        else:
            try:
                settings.store_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the store at {settings.store_dir}: {exc.strerror or exc}; "
                                 "pass --store DIR") from None
            self.catalog = Catalog(settings.store_dir / f"{settings.collection}.catalog.sqlite3")
            self._chroma_seen: int | None = None  # the catalog's data_version when our Chroma client loaded
            with self._chroma():
                pass
        self._check_model()

    # -- setup ----------------------------------------------------------------------------------
    def _open_collection(self) -> None:
        self.collection = self.client.get_or_create_collection(
            self.settings.collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
        )

    @contextmanager
    def _chroma(self) -> Iterator[Any]:
        """The collection for one Chroma call, with the store's Chroma lock held (local stores).

        Embedded Chroma is not made for several processes: any call may replay the write log into the
        vector index and save the index to disk, so processes take turns, one call at a time (a reader
        waits for one batch at most, never for a whole ingest). And a client loads the index once, then
        sees only the writes made through it: when another connection has committed to the catalog since,
        the client is reopened first. Otherwise a long-lived reader (chat) misses what a concurrent ingest
        added, or fails with "Nothing found on disk" if the store was empty when it started, and a writer
        builds on a stale index.
        """
        if self.settings.chroma_url:
            yield self.collection
            return
        with open(self.settings.store_dir / "chroma.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            seen = self.catalog.others_version()
            if seen != self._chroma_seen:
                self.client = _local_client(self.settings.store_dir)
                self._open_collection()
                self._chroma_seen = seen
            yield self.collection

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings.embedding_model, self.settings.embedding_backend)
        return self._embedder

    _query_embedder: Any = None

    @property
    def query_embedder(self) -> Any:
        """What embeds queries: the transformer's verified ONNX export when one is cached (no torch import:
        a cold search is ~0.7 s instead of 5-10 s), else the store's embedder. An embedder given to the
        store is always used as is."""
        if self._query_embedder is None:
            fast = None
            if self._embedder is None and self.settings.embedding_backend == "torch":
                from docqa.embeddings import load_query_embedder

                fast = load_query_embedder(self.settings.embedding_model)
            if fast is None and self._embedder is None and self.settings.embedding_backend == "torch":
                # No export yet (a store made before there was one): torch is loaded for this query anyway,
                # so make it now for the next process.
                from docqa.embeddings import prepare_query_embedder

                prepare_query_embedder(self.embedder)
            self._query_embedder = fast or self.embedder
        return self._query_embedder

    def query_path_pending(self) -> bool:
        """Whether prepare_query_path would export the transformer now (it takes 5-15 s, once)."""
        if self._embedder is None or self._embedder.backend != "torch":
            return False
        from docqa.embeddings import query_export_pending

        return query_export_pending(self._embedder)

    def prepare_query_path(self) -> None:
        """If this process loaded the transformer, export it for fast queries (once per model and machine)."""
        if self._embedder is not None and self._embedder.backend == "torch":
            from docqa.embeddings import prepare_query_embedder

            prepare_query_embedder(self._embedder)

    def _model_key(self) -> str:
        return f"{self.settings.embedding_backend}:{self.settings.embedding_model}"

    def _check_model(self) -> None:
        recorded = self.catalog.get_meta("embedding_model")
        if recorded and recorded != self._model_key():
            raise StoreError(
                f"collection '{self.settings.collection}' was built with embedding model {recorded}; "
                f"this run uses {self._model_key()}. Pass the same --embedding-model/--embedding-backend, "
                "or use another --collection"
            )

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock (one writer at a time; readers never wait) and clean up crashes."""
        lock_dir = self.settings.store_dir
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{self.settings.collection}.write.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"docqa: another process is writing to this store ({lock_dir}); waiting for it to finish...",
                      file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
            if not self.catalog.get_meta("embedding_model"):
                self.catalog.set_meta("embedding_model", self._model_key())
            self._repair_vectors()
            self.recover()
            yield

    def _repair_vectors(self) -> None:
        """Rebuild Chroma's vector index from the catalog if it cannot be loaded (under the write lock).

        Chroma rewrites its index files in place every `hnsw:sync_threshold` vectors; a process killed
        while it does leaves files no later process can load (e.g. an empty index_metadata.pickle), and
        every search would fail from then on. The catalog holds the text of every committed chunk, so the
        vectors are made again: one embedding pass over the store. A rebuild that is itself interrupted is
        resumed by the next writer (the catalog records it until it is done).
        """
        if self.settings.chroma_url:
            return
        from chromadb.errors import ChromaError

        problem = "an earlier rebuild was interrupted" if self.catalog.get_meta("vectors_rebuild") else None
        for _ in range(2 if problem is None else 0):
            try:
                with self._chroma() as collection:
                    collection.count()  # a client's first call loads the index from disk
                return
            except ChromaError as exc:
                problem = str(exc)
                self._chroma_seen = None  # retry once with a fresh client before calling it damage
        rows = self.catalog.committed_rows()
        print(f"docqa: the vector index in {self.settings.store_dir} cannot be loaded ({problem}); rebuilding it "
              f"from the catalog: {len(rows)} chunks to embed again...", file=sys.stderr)
        self.catalog.set_meta("vectors_rebuild", "started")
        with self._chroma():
            self.client.delete_collection(self.settings.collection)
            self._open_collection()
        for generation in self.catalog.orphans():
            self.catalog.forget_orphan(generation)  # their vectors went with the old collection
        size = self.settings.batch_size * 4
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            vectors = self.embedder.embed([r[1] for r in batch], self.settings.batch_size)
            with self._chroma() as collection:
                collection.upsert(ids=[r[0] for r in batch], embeddings=vectors, documents=[r[1] for r in batch],
                                  metadatas=[{"source": r[2], "generation": r[3], "chunk": r[4], "page_start": r[5],
                                              "page_end": r[6], "section": r[7]} for r in batch])
        self.catalog.set_meta("vectors_rebuild", "")

    def recover(self) -> int:
        """Remove what interrupted or replaced writes left in Chroma; return how many versions were cleaned."""
        orphans = self.catalog.orphans()
        for generation in orphans:
            with self._chroma() as collection:
                collection.delete(where={"generation": generation})
            self.catalog.forget_orphan(generation)
        return len(orphans)

    # -- documents ------------------------------------------------------------------------------
    def document(self, source: str) -> DocumentRow | None:
        return self.catalog.document(source)

    def documents(self) -> list[DocumentRow]:
        return self.catalog.documents()

    def count(self) -> int:
        return self.catalog.total_chunks()

    @property
    def chunking(self) -> str:
        """What decides a file's chunks and vectors besides its bytes; part of every generation id, so a
        file ingested again with other settings is a new version (and with the same ones, no change)."""
        s = self.settings
        return (f"chunk_tokens={s.chunk_tokens} overlap={s.overlap_tokens} chars_per_token={CHARS_PER_TOKEN} "
                f"model={self._model_key()}")

    def generation_for(self, source: str, file_hash: str) -> str:
        return generation_of(source, file_hash, self.chunking)

    def is_current(self, source: str, file_hash: str) -> bool:
        """Whether the store holds `source` made from these bytes with this store's chunking settings."""
        existing = self.catalog.document(source)
        return bool(existing and existing.file_hash == file_hash
                    and existing.generation == self.generation_for(source, file_hash))

    def begin_document(self, source: str, file_hash: str) -> str:
        generation = self.generation_for(source, file_hash)
        self.catalog.begin(source, generation)
        return generation

    def add_chunks(self, generation: str, source: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Write one batch of a pending document to both sides (invisible to search until commit)."""
        self.record_chunks(generation, source, chunks)
        self.add_vectors([(generation, source, c) for c in chunks], vectors)

    def record_chunks(self, generation: str, source: str, chunks: Sequence[Chunk]) -> None:
        """Put chunks of a begun document in the catalog (first: the catalog must know of every vector)."""
        self.catalog.add_chunks(generation, source, [(f"{generation}:{c.index}", c.index, c.page_start, c.page_end,
                                                      c.content_hash, c.text, c.section) for c in chunks])

    def add_vectors(self, items: Sequence[tuple[str, str, Chunk]], vectors: np.ndarray) -> None:
        """Write recorded chunks of any number of begun documents, (generation, source, chunk) each, to Chroma
        in one call: one call per document cost ~25 ms, most of the time of ingesting small files."""
        with self._chroma() as collection:
            collection.upsert(
                ids=[f"{generation}:{c.index}" for generation, _, c in items],
                embeddings=vectors,
                documents=[c.text for _, _, c in items],
                metadatas=[{"source": source, "generation": generation, "chunk": c.index, "page_start": c.page_start,
                            "page_end": c.page_end, "section": c.section} for generation, source, c in items],
            )

    def commit_document(self, source: str, generation: str, file_hash: str, pages: int, chunks: int) -> None:
        self.catalog.commit(source, generation, file_hash, pages, chunks)
        self._rankings.clear()
        self.recover()

    def commit_documents(self, versions: Sequence[tuple[str, str, str, int, int]]) -> None:
        """Make each (source, generation, file_hash, pages, chunks) current, then remove the versions they
        replaced. Unlike commit_document it leaves other pending versions alone: the caller's own, still
        being written."""
        replaced = [old for version in versions if (old := self.catalog.commit(*version))]
        self._rankings.clear()
        self._remove(replaced)

    def abort_document(self, generation: str) -> None:
        self._remove([generation])

    def abort_documents(self, written: Sequence[str], unwritten: Sequence[str] = ()) -> None:
        """Take pending versions out: `written` may have chunks in Chroma, `unwritten` have none yet.

        Any of them that a commit made current meanwhile is left alone (an interrupted batch commit)."""
        pending = set(self.catalog.orphans())
        self._remove([g for g in written if g in pending])
        for generation in unwritten:
            if generation in pending:
                self.catalog.forget_orphan(generation)

    def _remove(self, generations: Sequence[str]) -> None:
        """Delete these versions' vectors from Chroma (one call per few hundred), then their catalog records."""
        for start in range(0, len(generations), 200):
            part = list(generations[start : start + 200])
            with self._chroma() as collection:
                collection.delete(where={"generation": part[0]} if len(part) == 1 else
                                  {"generation": {"$in": part}})
            for generation in part:
                self.catalog.forget_orphan(generation)

    def delete_document(self, source: str) -> DocumentRow | None:
        removed = self.catalog.delete(source)
        self._rankings.clear()
        self.recover()
        return removed

    # -- search ---------------------------------------------------------------------------------
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
        (docqa.fusion.lexical_bonuses; a catalog without BM25, a Chroma server's, scores 1/rank)."""
        scored = getattr(self.catalog, "lexical_scores", None)
        if scored is None:
            hits = [(chunk_id, 1.0 / rank) for rank, chunk_id in enumerate(self.catalog.lexical(query, depth), 1)]
        else:
            hits = scored(query, depth)
        identifiers = getattr(self.catalog, "identifier_matches", None)
        return add_identifier_bonuses(lexical_bonuses(hits), identifiers(query) if identifiers and hits else [])

    # -- re-rank (the static tier's quality at query time) ----------------------------------------
    _reranker: Any = None  # a docqa.static_embeddings.Reranker, made on first use

    @property
    def rerank_depth(self) -> int:
        depth = self.settings.rerank_depth
        if depth is None:
            from docqa.static_embeddings import DEFAULT_RERANK_DEPTH

            depth = DEFAULT_RERANK_DEPTH if self.settings.embedding_backend == "static" else 0
        return max(0, min(depth, self.settings.search_depth))

    @property
    def reranker(self) -> Any:
        if self._reranker is None:
            from docqa.embeddings import load_query_embedder
            from docqa.static_embeddings import Reranker

            # The transformer's ONNX export embeds the same vectors without importing torch.
            transformer = load_query_embedder(self.settings.embedding_model)
            if transformer is None:
                from docqa.embeddings import prepare_query_embedder

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
        from chromadb.errors import ChromaError

        # Nothing committed, nothing to find. (The catalog's count is free; Chroma's count() cost ~15 ms a
        # search at 100k chunks, and Chroma simply returns fewer results when it holds fewer.)
        if not query.strip() or not self.catalog.total_chunks():
            return []
        vector = self.query_embedder.embed([query])
        for attempt in (1, 2):
            try:
                with self._chroma() as collection:
                    # Ask past `depth`: uncommitted chunks of a concurrent ingest are dropped below.
                    result = collection.query(query_embeddings=vector, n_results=depth + 64, include=["distances"])
                break
            except ChromaError as exc:
                if self.settings.chroma_url:
                    raise StoreError(f"the Chroma server at {self.settings.chroma_url} failed a query ({exc}): "
                                     "check its log") from None
                if attempt == 2:
                    raise StoreError(f"the vector index cannot be read ({exc}); if an ingest was killed, run "
                                     "`docqa ingest` on this store again (e.g. on the same files): it rebuilds "
                                     "the index from the catalog") from None
                self._chroma_seen = None  # a fresh client reads the index from disk again
        ids, distances = result["ids"][0], result["distances"][0]
        committed = self.catalog.committed(ids)
        return [(i, 1.0 - d) for i, d in zip(ids, distances, strict=True) if i in committed][:depth]


def check_collection_name(name: str) -> None:
    if not _COLLECTION_NAME.fullmatch(name):
        raise StoreError(f"invalid collection name '{name}': use 3 to 500 letters, digits, "
                         "'.', '_' or '-', starting and ending with a letter or digit")


def valid_utf8(text: str) -> str:
    """`text` with unpaired surrogates replaced by "?": they come from undecodable bytes in argv (a Latin-1
    terminal) or an LLM's JSON "\\ud800", and the tokenizer, SQLite and stdout accept only valid UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _local_client(store_dir: Path) -> Any:
    """A client on the local store that loads the vector index afresh.

    chromadb keeps one engine per path in a process and hands it to every new client; it is dropped from
    that cache so that this client reads what other processes wrote (clients still holding the old engine
    keep working; ArchivalStore._chroma reopens them before their next call).
    """
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient
    from chromadb.config import Settings as ChromaSettings

    SharedSystemClient._identifier_to_system.pop(str(store_dir / "chroma"), None)
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(store_dir / "chroma"),
                                         settings=ChromaSettings(anonymized_telemetry=False))
    except OSError as exc:
        raise StoreError(f"cannot open the store at {store_dir}: {exc.strerror or exc}; pass --store DIR") from None
