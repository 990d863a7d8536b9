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
from pathlib import Path
from typing import Any

import numpy as np

from docqa.archive.access import LocalAccess
from docqa.archive.health import ReadOnlyStore, read_only
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


def chunking_of(settings: Settings) -> str:
    """What decides a file's chunks and vectors besides its bytes (see ArchivalStore.chunking)."""
    return (f"chunk_tokens={settings.chunk_tokens} overlap={settings.overlap_tokens} chars_per_token="
            f"{CHARS_PER_TOKEN} model={settings.embedding_backend}:{settings.embedding_model}")


@contextmanager
def write_lock(store_dir: Path, collection: str) -> Iterator[None]:
    """Hold a store's write lock: one writer at a time (readers never wait); says so when it has to wait."""
    store_dir.mkdir(parents=True, exist_ok=True)
    with open(store_dir / f"{collection}.write.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"docqa: another process is writing to this store ({store_dir}); waiting for it to finish...",
                  file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class ArchivalStore(LocalAccess, Searching, Resuming):
    """Chroma + catalog behind one interface: write documents all-or-nothing, search in pages."""

    _client: Any = None  # local stores open Chroma on first use: listing, lexical search and an agent's first
    _collection: Any = None  # LLM request need only the catalog (importing chromadb alone costs about a second)

    def __init__(self, settings: Settings, embedder: Embedder | None = None, *, check: bool = True) -> None:
        """`check`: refuse a catalog that is empty beside a populated Chroma (False: for `docqa repair`)."""
        self.settings = settings
        self._embedder = embedder
        self._rankings: OrderedDict[tuple, list[tuple[str, float]]] = OrderedDict()
        check_collection_name(settings.collection)
        if settings.chroma_url:
            from docqa.archive.chroma import connect_server
            from docqa.archive.server_catalog import ServerCatalog

            self._client = connect_server(settings.chroma_url, settings.chroma_timeout)
            self.catalog: Catalog = ServerCatalog(self._client, settings.collection)
            self._open_collection()
        else:
            self.read_only = read_only(settings.store_dir) or read_only(self.catalog_path)
            try:
                if not self.read_only:
                    settings.store_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the store at {settings.store_dir}: {exc.strerror or exc}; "
                                 "pass --store DIR") from None
            with self._guard():
                self.catalog = SqliteCatalog(self.catalog_path, read_only=self.read_only)
            self._chroma_seen: int | None = None  # the catalog's data_version when our Chroma client loaded
        with self._guard():
            self._check_model()
            if check and not settings.chroma_url:
                self._check_population()

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
        with self.write_lock(), self._guard():
            if not self.catalog.get_meta("embedding_model"):
                self.catalog.set_meta("embedding_model", self._model_key())
            self._repair_vectors()
            self.recover(resume=resume)
            yield

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """The store's write lock alone (`writing` without its clean-up)."""
        if self.read_only:
            raise ReadOnlyStore(f"read-only store: {self.settings.store_dir} cannot be written by this user; "
                                "list, search and ask work, ingest, delete and repair need write access")
        with write_lock(self.settings.store_dir, self.settings.collection):
            yield

    def _repair_vectors(self) -> str | None:
        """Rebuild Chroma's vectors from the catalog if they are damaged or missing (under the write lock);
        return the problem found, if any (see docqa.archive.vectors)."""
        if self.settings.chroma_url:
            return None
        from docqa.archive.vectors import rebuild_vectors, vector_problem

        problem = vector_problem(self)
        if problem:
            rebuild_vectors(self, problem)
        return problem

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
        with self._guard():
            return self.catalog.document(source)

    def documents(self) -> list[DocumentRow]:
        with self._guard():
            return self.catalog.documents()

    def count(self) -> int:
        with self._guard():
            return self.catalog.total_chunks()

    def search(self, query: str, page: int = 0, page_size: int | None = None, mode: str = "hybrid") -> SearchPage:
        with self._guard():
            return super().search(query, page, page_size, mode)

    @property
    def chunking(self) -> str:
        """What decides a file's chunks and vectors besides its bytes; part of every generation id, so a
        file ingested again with other settings is a new version (and with the same ones, no change)."""
        return chunking_of(self.settings)

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
        self._check_room(chunks)
        self.catalog.add_chunks(generation, source, [(chunk_id(generation, c), c.index, c.page_start, c.page_end,
                                                      c.content_hash, c.text, c.section) for c in chunks])

    def add_vectors(self, items: Sequence[tuple[str, str, Chunk]], vectors: np.ndarray) -> None:
        """Write recorded chunks of any number of begun documents, (generation, source, chunk) each, to Chroma
        in one call: one call per document cost ~25 ms, most of the time of ingesting small files."""
        self._check_room([c for _, _, c in items], vectors)
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
