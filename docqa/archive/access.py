"""How an ArchivalStore reaches a local store's files: Chroma's lock and clients, the checks made before
Chroma loads its files, and the translation of whatever the catalog or Chroma raise into one StoreError.

A mixin of ArchivalStore (docqa.archive.store), which holds the settings, the catalog and the Chroma client; see
docqa.archive.health for what can go wrong with the files, docqa.archive.readonly for read-only stores.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from docqa.archive.catalog import Catalog
from docqa.archive.chroma import EngineReader, local_client
from docqa.archive.exact import ExactReader, UnknownLayout
from docqa.archive.health import (
    LOW_SPACE,
    REPAIR,
    DiskFull,
    StoreDamaged,
    catalog_error,
    chroma_error,
    chroma_population,
    free_space,
    index_bytes,
    index_signature,
    is_interrupt,
    vector_file_problems,
)
from docqa.archive.sqlite_catalog import SqliteCatalog
from docqa.chunking import Chunk
from docqa.errors import DocqaError
from docqa.settings import Settings


class LocalAccess:
    """Locks, checks and failures of a local store's files (a Chroma server store passes through)."""

    settings: Settings
    catalog: Catalog
    _client: Any
    _collection: Any
    _chroma_seen: int | None
    read_only = False  # a local store this process may only read (see docqa.archive.readonly)
    _reader: Any = None  # an ExactReader or EngineReader while no client is open (see nearest)
    _reader_seen: int | None = None
    _reader_failed = False
    _open_collection: Callable[[], None]  # ArchivalStore's: (re)open the collection through the current client

    @property
    def catalog_path(self) -> Path:
        return self.settings.store_dir / f"{self.settings.collection}.catalog.sqlite3"

    @property
    def catalog_name(self) -> str:  # type: ignore[override]
        return "the catalog of the Chroma server" if self.settings.chroma_url else f"the catalog {self.catalog_path}"

    @property
    def chroma_dir(self) -> Path:
        """Chroma's directory in the store (a read-only store's Chroma opens a private copy of it)."""
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
        """Refuse to load a vector index whose files are missing or damaged (see docqa.archive.health).

        Checking the graph's links reads the whole index, so a process that found it sound leaves a note of
        the files' sizes and times beside the store (`<collection>.index-checked`): until Chroma saves its index
        again, the next process checks only what costs nothing.
        """
        if self._rebuilding:
            return
        stamp = self.settings.store_dir / f"{self.settings.collection}.index-checked"
        signature = index_signature(self.chroma_dir, self.settings.collection)
        try:
            deep = stamp.read_text() != signature
        except OSError:
            deep = True
        problems = vector_file_problems(self.chroma_dir, self.settings.collection, self.catalog.total_chunks(),
                                        deep)
        if problems:
            raise StoreDamaged(f"the vector index in {self.chroma_dir} is damaged ({problems[0]}): {REPAIR} (or "
                               "run `docqa ingest` again): it rebuilds the vectors from the catalog", problems[0])
        if deep and not self.read_only:
            with contextlib.suppress(OSError):
                partial = stamp.with_name(stamp.name + ".new")
                partial.write_text(signature)
                partial.replace(stamp)

    def nearest(self, vectors: list[list[float]], n_results: int) -> tuple[list[str], list[float]]:
        """(ids, cosine distances) of the chunks nearest to the first of `vectors`, nearest first (committed or
        not). A local store that has not opened chromadb's client reads the vectors itself (ExactReader, up to
        EXACT_LIMIT chunks) or asks Chroma's engine directly (EngineReader): a cold search then skips importing
        chromadb. Otherwise, or if that fails, the client."""
        if not self.settings.chroma_url and self._client is None and not self._reader_failed:
            try:
                with self._chroma_lock():
                    seen = self.catalog.others_version()
                    if self._reader is None or seen != self._reader_seen:
                        self._close_reader()
                        self._check_vector_files()
                        self._reader = self._open_reader(self._vectors_home(seen))
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

    def _open_reader(self, home: Path) -> Any:
        """An exact reader of the vectors for a store of up to EXACT_LIMIT chunks (faster than Chroma's engine to
        open), else, or if the files are not as it knows them, Chroma's engine."""
        try:
            return ExactReader(home, self.settings.collection)
        except UnknownLayout:
            return EngineReader(home, self.settings.collection)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

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
