"""The archival store: Chroma (embedded or a server) for vectors plus the catalog for truth and words.

Documents are written all-or-nothing, as versions (generations) that become current in one step; search
is in docqa.archive.search.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from docqa.archive.chroma import EngineReader, local_client
from docqa.archive.health import (
    LOW_SPACE,
    REPAIR,
    DiskFull,
    ReadOnlyStore,
    StoreDamaged,
    catalog_error,
    chroma_error,
    chroma_population,
    free_space,
    index_bytes,
    is_interrupt,
    read_only,
    vector_file_problems,
)
from docqa.archive.records import (
    SEARCH_MODES,
    ChunkRecord,
    DocumentRow,
    SearchHit,
    SearchPage,
    StoreError,
    check_collection_name,
    valid_utf8,
)
from docqa.archive.search import Searching
from docqa.archive.catalog import Catalog
from docqa.archive.sqlite_catalog import SqliteCatalog
from docqa.chunking import CHARS_PER_TOKEN, Chunk
from docqa.embeddings.load import load_embedder
from docqa.embeddings.transformer import Embedder
from docqa.errors import DocqaError
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


class ArchivalStore(Searching):
    """Chroma + catalog behind one interface: write documents all-or-nothing, search in pages."""

    _client: Any = None  # local stores open Chroma on first use: listing, lexical search and an agent's first
    _collection: Any = None  # LLM request need only the catalog (importing chromadb alone costs about a second)
    _reader: Any = None  # a docqa.archive.chroma.EngineReader while no client is open (see nearest)
    _reader_seen: int | None = None
    _reader_failed = False

    read_only = False  # a local store this process may only read (see docqa.archive.readonly)

    def __init__(self, settings: Settings, embedder: Embedder | None = None, *, check: bool = True) -> None:
        """`check`: refuse a catalog that is empty beside a populated Chroma (False: for `docqa repair`)."""
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

    @property
    def catalog_path(self) -> Path:
        return self.settings.store_dir / f"{self.settings.collection}.catalog.sqlite3"

    @property
    def catalog_name(self) -> str:  # type: ignore[override]
        return "the catalog of the Chroma server" if self.settings.chroma_url else f"the catalog {self.catalog_path}"

    @property
    def chroma_dir(self) -> Path:
        """Chroma's directory in the store (a read-only store reads a private copy of it instead)."""
        return self.settings.store_dir / "chroma"

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn what SQLite raises on a damaged, full or read-only catalog into one StoreError naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            translated = None if self.settings.chroma_url else catalog_error(self.catalog_path, exc)
            if translated is None:
                raise
            raise translated from None

    def _check_population(self) -> None:
        """A catalog that knows of nothing beside a Chroma holding this collection's vectors was emptied,
        deleted or replaced: the store is not empty, and an ingest would leave those vectors untracked."""
        if not self.catalog.is_empty():
            return
        held = chroma_population(self.chroma_dir, self.settings.collection)
        if held:
            raise StoreDamaged(f"the catalog {self.catalog_path} holds no documents but Chroma beside it holds "
                               f"{held} chunks of collection '{self.settings.collection}' (the catalog was "
                               f"emptied, deleted or replaced): {REPAIR} to rebuild it from Chroma")

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
    def _chroma(self, check: bool = True) -> Iterator[Any]:
        """The collection for one Chroma call, with the store's Chroma lock held (local stores).

        Embedded Chroma is not made for several processes: any call may replay the write log into the
        vector index and save the index to disk, so processes take turns, one call at a time (a reader
        waits for one batch at most, never for a whole ingest). And a client loads the index once, then
        sees only the writes made through it: when another connection has committed to the catalog since,
        the client is reopened first. Otherwise a long-lived reader (chat) misses what a concurrent ingest
        added, or fails with "Nothing found on disk" if the store was empty when it started, and a writer
        builds on a stale index.

        Whatever a local Chroma raises (its Rust core panics too, with a BaseException) becomes one StoreError
        (docqa.archive.health.chroma_error). `check`: look at the index files before a client loads them
        (a damaged header.bin crashed the process); the repair path, which never loads them, skips it.
        """
        if self.settings.chroma_url:
            yield self._collection
            return
        try:
            with self._chroma_lock():
                seen = self.catalog.others_version()
                if seen != self._chroma_seen or self._client is None:
                    self._close_reader()  # from here on this process reads through the client it writes through
                    if check:
                        self._check_vector_files()
                    self._client = local_client(self._vectors_home(seen), previous=self._client)
                    self._open_collection()
                    self._chroma_seen = seen
                yield self._collection
        except BaseException as exc:
            if is_interrupt(exc) or isinstance(exc, DocqaError | sqlite3.Error):
                raise
            self._chroma_seen = None  # the next call starts from a fresh client
            raise chroma_error(self.chroma_dir, exc, free_space(self.settings.store_dir)) from None

    @contextmanager
    def _chroma_lock(self) -> Iterator[None]:
        """The lock Chroma's callers take turns on; a read-only store takes it shared where the file exists
        (its owner may still write it) and goes without where there is none (nobody can write)."""
        path = self.settings.store_dir / "chroma.lock"
        handle: IO[bytes] | None = None
        try:
            handle = open(path, "rb" if self.read_only else "ab")  # noqa: SIM115 - closed below
        except OSError:
            if not self.read_only:
                raise
        try:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX)
            yield
        finally:
            if handle is not None:
                handle.close()

    _copy: Any = None  # a read-only store's docqa.archive.readonly.PrivateCopy

    def _vectors_home(self, seen: int) -> Path:
        """The directory whose chroma/ this process's Chroma opens: the store's, or for a read-only store a
        private copy (chromadb writes to its files on opening them), made again when the store has changed."""
        if not self.read_only:
            return self.settings.store_dir
        from docqa.archive.readonly import PrivateCopy

        if self._copy is None or self._copy.seen != seen:
            old, self._copy = self._copy, PrivateCopy(self.chroma_dir, seen)
            if old is not None:
                self._close_reader()
                old.remove()  # its engine is closed when the new client replaces the old one
        return self._copy.home

    _rebuilding = False  # docqa.archive.vectors.rebuild_vectors is making the vectors again

    def _check_vector_files(self) -> None:
        """Refuse to load a vector index whose files are missing or damaged (see docqa.archive.health)."""
        if self._rebuilding:
            return
        problems = vector_file_problems(self.chroma_dir, self.settings.collection, self.catalog.total_chunks())
        if problems:
            raise StoreDamaged(f"the vector index in {self.chroma_dir} is damaged ({problems[0]}): {REPAIR} (or "
                               "run `docqa ingest` again): it rebuilds the vectors from the catalog", problems[0])

    def nearest(self, vectors: list[list[float]], n_results: int) -> tuple[list[str], list[float]]:
        """(ids, cosine distances) of the chunks nearest to the first of `vectors`, nearest first (committed or
        not). A local store that has not opened chromadb's client asks Chroma's engine directly (EngineReader:
        a cold search then skips importing chromadb); otherwise, or if that fails, the client."""
        if not self.settings.chroma_url and self._client is None and not self._reader_failed:
            try:
                with self._chroma_lock():
                    seen = self.catalog.others_version()
                    if self._reader is None or seen != self._reader_seen:
                        self._close_reader()
                        self._check_vector_files()
                        self._reader = EngineReader(self._vectors_home(seen), self.settings.collection)
                        self._reader_seen = seen
                    return self._reader.nearest(vectors, n_results)
            except BaseException as exc:  # the bindings are not chromadb's public API: use the client instead
                if is_interrupt(exc) or isinstance(exc, DocqaError | sqlite3.Error):
                    raise
                self._close_reader()
                self._reader_failed = True
        with self._chroma() as collection:
            result = collection.query(query_embeddings=vectors, n_results=n_results, include=["distances"])
        return result["ids"][0], result["distances"][0]

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

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
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock (one writer at a time; readers never wait) and clean up crashes."""
        with self.write_lock(), self._guard():
            if not self.catalog.get_meta("embedding_model"):
                self.catalog.set_meta("embedding_model", self._model_key())
            self._repair_vectors()
            self.recover()
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
        self.catalog.add_chunks(generation, source, [(f"{generation}:{c.index}", c.index, c.page_start, c.page_end,
                                                      c.content_hash, c.text, c.section) for c in chunks])

    def add_vectors(self, items: Sequence[tuple[str, str, Chunk]], vectors: np.ndarray) -> None:
        """Write recorded chunks of any number of begun documents, (generation, source, chunk) each, to Chroma
        in one call: one call per document cost ~25 ms, most of the time of ingesting small files."""
        self._check_room([c for _, _, c in items], vectors)
        with self._chroma() as collection:
            collection.upsert(
                ids=[f"{generation}:{c.index}" for generation, _, c in items],
                embeddings=vectors,
                documents=[c.text for _, _, c in items],
                metadatas=[{"source": source, "generation": generation, "chunk": c.index, "page_start": c.page_start,
                            "page_end": c.page_end, "section": c.section} for generation, source, c in items],
            )

    def _check_room(self, chunks: Sequence[Chunk], vectors: np.ndarray | None = None) -> None:
        """Stop before a write the disk has no room for (local stores), leaving some room free.

        Chroma fails in its own words on a full disk ("Error in compaction: Failed to apply logs"), and worse,
        one that fills while it saves its vector index leaves the index unreadable (an empty pickle) until it
        is rebuilt: every search fails meanwhile. It rewrites the index files whole, so the free space must
        hold them once more, plus the batch several times over (its write log, metadata, text index). The
        room left free (LOW_SPACE) is what Chroma needs to open the store for searches: it writes as it opens.
        """
        free = None if self.settings.chroma_url else free_space(self.settings.store_dir)
        if free is None:
            return
        needed = LOW_SPACE + 4 * sum(len(c.text.encode("utf-8", "surrogatepass")) + 300 for c in chunks)
        if vectors is not None:
            needed += index_bytes(self.chroma_dir, self.settings.collection) + 4 * vectors.nbytes
        if free < needed and isinstance(self.catalog, SqliteCatalog):
            self.catalog.checkpoint()
            free = free_space(self.settings.store_dir) or 0
        if free < needed:
            raise DiskFull(f"the disk holding {self.settings.store_dir} is full ({free / 1e6:.1f} MB free; storing "
                           f"the next {len(chunks)} chunks needs about {needed / 1e6:.1f} MB): free some space and "
                           "run the command again (what was stored before is intact)")

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
