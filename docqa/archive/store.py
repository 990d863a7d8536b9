"""The archival store: Chroma (embedded or a server) for vectors plus the catalog for truth and words.

Documents are written all-or-nothing, as versions (generations) that become current in one step; search
is in docqa.archive.search.
"""

from __future__ import annotations

import fcntl
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from docqa.archive.chroma import local_client
from docqa.archive.records import (
    SEARCH_MODES,
    ChunkRecord,
    DocumentRow,
    SearchHit,
    SearchPage,
    StoreError,
    check_collection_name,
    chunk_id,
    chunk_metadata,
    valid_utf8,
)
from docqa.archive.resume import Resuming
from docqa.archive.search import Searching
from docqa.archive.catalog import Catalog
from docqa.archive.sqlite_catalog import SqliteCatalog
from docqa.chunking import CHARS_PER_TOKEN, Chunk
from docqa.embeddings.load import load_embedder
from docqa.embeddings.transformer import Embedder
from docqa.settings import Settings

__all__ = ["SEARCH_MODES", "ArchivalStore", "ChunkRecord", "DocumentRow", "SearchHit", "SearchPage", "StoreError",
           "check_collection_name", "generation_of", "valid_utf8"]


def generation_of(source: str, file_hash: str, chunking: str) -> str:
    """The id of one version of one document: its bytes, chunked and embedded one way (`chunking`, see
    ArchivalStore.chunking); chunk ids are `<generation>:<index>`."""
    version = hashlib.sha256(f"{file_hash}\n{chunking}".encode("utf-8", "surrogatepass")).hexdigest()
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:12] + version[:12]


class ArchivalStore(Searching, Resuming):
    """Chroma + catalog behind one interface: write documents all-or-nothing, search in pages."""

    _client: Any = None  # local stores open Chroma on first use: listing, lexical search and an agent's first
    _collection: Any = None  # LLM request need only the catalog (importing chromadb alone costs about a second)

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self._embedder = embedder
        self._rankings: OrderedDict[tuple, list[tuple[str, float]]] = OrderedDict()
        check_collection_name(settings.collection)
        if settings.chroma_url:
            from docqa.archive.chroma import connect_server
            from docqa.archive.server_catalog import ServerCatalog

            self._client = connect_server(settings.chroma_url)
            self.catalog: Catalog = ServerCatalog(self._client, settings.collection)
            self._open_collection()
        else:
            try:
                settings.store_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the store at {settings.store_dir}: {exc.strerror or exc}; "
                                 "pass --store DIR") from None
            self.catalog = SqliteCatalog(settings.store_dir / f"{settings.collection}.catalog.sqlite3")
            self._chroma_seen: int | None = None  # the catalog's data_version when our Chroma client loaded
        self._check_model()

    # -- setup ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The Chroma client (for a local store, opened on first use)."""
        if self._client is None:
            with self._chroma():
                pass
        return self._client

    @property
    def collection(self) -> Any:
        """The Chroma collection of the store's chunks (for a local store, opened on first use)."""
        if self._collection is None:
            with self._chroma():
                pass
        return self._collection

    def _open_collection(self) -> None:
        self._collection = self._client.get_or_create_collection(
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
            yield self._collection
            return
        with open(self.settings.store_dir / "chroma.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            seen = self.catalog.others_version()
            if seen != self._chroma_seen or self._client is None:
                self._client = local_client(self.settings.store_dir, previous=self._client)
                self._open_collection()
                self._chroma_seen = seen
            yield self._collection

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings.embedding_model, self.settings.embedding_backend)
        return self._embedder

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
    def writing(self, resume: bool = False) -> Iterator[None]:
        """Hold the store's write lock (one writer at a time; readers never wait) and clean up crashes;
        `resume`: keep what interrupted ingests left pending, for this writer to adopt (see recover)."""
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
            self.recover(resume=resume)
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

    def recover(self, resume: bool = False) -> int:
        """Remove what interrupted or replaced writes left in Chroma; return how many versions were cleaned.

        `resume` (an ingest run): the versions interrupted ingests left pending are kept instead, for the run
        to adopt or to remove at its end (docqa.archive.resume)."""
        orphans = self.catalog.orphans()
        if resume:
            orphans = self.keep_resumable(orphans)
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
        self.catalog.add_chunks(generation, source, [(chunk_id(generation, c), c.index, c.page_start, c.page_end,
                                                      c.content_hash, c.text, c.section) for c in chunks])

    def add_vectors(self, items: Sequence[tuple[str, str, Chunk]], vectors: np.ndarray) -> None:
        """Write recorded chunks of any number of begun documents, (generation, source, chunk) each, to Chroma
        in one call: one call per document cost ~25 ms, most of the time of ingesting small files."""
        with self._chroma() as collection:
            collection.upsert(
                ids=[chunk_id(generation, c) for generation, _, c in items],
                embeddings=vectors,
                documents=[c.text for _, _, c in items],
                metadatas=[chunk_metadata(generation, source, c) for generation, source, c in items],
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
