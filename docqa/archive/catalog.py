"""The catalog: what archival memory knows besides the vectors, behind one interface with two backends.

A store has one catalog: SQLite beside a local Chroma (docqa.archive.sqlite_catalog), or records in the
Chroma server itself (docqa.archive.server_catalog). It holds which version ("generation") of each document
is current, the generations still to be removed from Chroma, the store's settings, and it answers the
lexical side of search. Chroma holds the vectors; the catalog is the truth about what is committed.

The life of a version is written once, here (`Catalog.begin` ... `Catalog.forget_orphan`); each backend
supplies the storage steps. A version is

    pending   begun: its chunks go to the catalog and to Chroma batch by batch; invisible to search
    current   committed: the document's one visible version
    garbage   replaced or deleted: its vectors are still in Chroma until a writer removes them

A crash at any point leaves current versions whole and the others marked, so the next writer's
`ArchivalStore.recover` removes what they left in Chroma (`orphans`, then `forget_orphan`); an ingest
re-run may first adopt a pending version of the same file instead (`resumable`, docqa.archive.resume).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from docqa.archive.records import ChunkRecord, DocumentRow

PENDING = "pending"
GARBAGE = "garbage"


@dataclass(frozen=True)
class Mark:
    """A generation that is not current (or not yet): pending or garbage, and whether its writer still runs."""

    generation: str
    source: str
    state: str  # PENDING or GARBAGE
    writer_alive: bool = False


class Catalog(ABC):
    """The interface ArchivalStore and search use, and the version state machine on top of its storage steps."""

    # -- the life of a version (written once) -----------------------------------------------------
    def begin(self, source: str, generation: str) -> None:
        """Record a pending generation before any of its chunks is written anywhere."""
        self._mark(generation, source, PENDING)

    def commit(self, source: str, generation: str, file_hash: str, pages: int, chunks: int) -> str | None:
        """Make `generation` the current version of `source`; return the version it replaced, if any.

        The steps go in this order so that a backend without transactions (a Chroma server) stopped between
        any two of them leaves the old version current and the new one pending: the replaced version is
        marked garbage while still current (a mark `orphans` ignores while it is), then the document switches,
        then the pending mark goes. A backend with transactions (SQLite) does all of it in one.
        """
        with self._transaction():
            old = self.document(source)
            replaced = old.generation if old and old.generation != generation else None
            if replaced:
                self._mark(replaced, source, GARBAGE)
            self._write_document(source, generation, file_hash, pages, chunks)
            self._unmark(generation)
            self._changed()
        return replaced

    def delete(self, source: str) -> DocumentRow | None:
        """Take `source` out of the store (its version becomes garbage); return what it was, or None."""
        with self._transaction():
            old = self.document(source)
            if old:
                self._mark(old.generation, source, GARBAGE)
                self._remove_document(source)
                self._changed()
        return old

    def orphans(self) -> list[str]:
        """Generations whose chunks must go from Chroma: garbage, and pending ones whose writer is gone.

        A mark on a current version is the trace of a commit that stopped between its steps: a pending
        mark there is dropped (only the last step was lost), a garbage one ignored (the switch never came).
        """
        marks = self._marks()
        current = self._current({mark.source for mark in marks})
        found = []
        for mark in marks:
            if current.get(mark.source) == mark.generation:
                if mark.state == PENDING:
                    self._unmark(mark.generation)
                continue
            if mark.state == GARBAGE or not mark.writer_alive:
                found.append(mark.generation)
        return found

    def resumable(self) -> dict[str, str]:
        """Pending generations whose writer is gone (generation -> source): an interrupted ingest's work, which
        a re-run of the same file may adopt (docqa.archive.resume). Call after `orphans`, which settles the
        marks of versions that did become current."""
        return {mark.generation: mark.source for mark in self._marks()
                if mark.state == PENDING and not mark.writer_alive}

    def forget_orphan(self, generation: str) -> None:
        """The orphan's vectors are gone from Chroma: drop what the catalog still holds of it."""
        with self._transaction():
            self._drop_rows(generation)
            self._unmark(generation)

    # -- storage steps (each backend) -------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Make the steps inside one atomic change where the backend can; by default, ordered steps."""
        yield

    @abstractmethod
    def _mark(self, generation: str, source: str, state: str) -> None:
        """Record `generation` of `source` as PENDING (with this writer's identity) or GARBAGE."""

    @abstractmethod
    def _unmark(self, generation: str) -> None:
        """Forget the mark of `generation` (there may be none)."""

    @abstractmethod
    def _marks(self) -> list[Mark]:
        """Every marked generation."""

    @abstractmethod
    def _current(self, sources: Iterable[str]) -> dict[str, str]:
        """source -> its current generation, for those of `sources` that are in the store."""

    @abstractmethod
    def _write_document(self, source: str, generation: str, file_hash: str, pages: int, chunks: int) -> None:
        """Make this the document's row (the catalog's own rows of its other versions may go with it)."""

    @abstractmethod
    def _remove_document(self, source: str) -> None:
        """Remove the document's row (and the catalog's own rows of its chunks)."""

    def _drop_rows(self, generation: str) -> None:  # noqa: B027 - a step most backends do not need
        """Drop the catalog's own rows of `generation`'s chunks (a backend that keeps none has nothing to do)."""

    def _changed(self) -> None:  # noqa: B027 - a step most backends do not need
        """Tell every reader's search cache that what is committed changed (if `version` does not see it)."""

    # -- documents and settings -------------------------------------------------------------------
    @abstractmethod
    def document(self, source: str) -> DocumentRow | None: ...

    @abstractmethod
    def documents(self) -> list[DocumentRow]: ...

    @abstractmethod
    def total_chunks(self) -> int: ...

    @abstractmethod
    def add_chunks(self, generation: str, source: str, chunks: Iterable[tuple]) -> None:
        """Chunks of a begun generation: (id, idx, page_start, page_end, content_hash, text, section) each."""

    def known_chunks(self, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` that have a chunk row here, committed or not; a backend that keeps no rows of
        its own (a Chroma server: the chunks are the rows) knows them all."""
        return set(ids)

    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abstractmethod
    def version(self) -> int:
        """Changes whenever anyone commits or deletes (search caches key on it)."""

    def others_version(self) -> int:
        """Changes whenever another connection or process commits."""
        return self.version()

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release connections."""

    # -- search -----------------------------------------------------------------------------------
    @abstractmethod
    def committed(self, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` of chunks of a current version."""

    @abstractmethod
    def records(self, ids: Sequence[str]) -> dict[str, ChunkRecord]:
        """The committed chunks among `ids` (others, e.g. of a pending ingest, are left out)."""

    @abstractmethod
    def lexical(self, query: str, limit: int) -> list[str]:
        """Ids of committed chunks matching the query's words, best first."""

    def lexical_scores(self, query: str, limit: int) -> list[tuple[str, float]]:
        """(id, score) of the lexical matches, best first; without a score of its own, 1/rank."""
        return [(chunk_id, 1.0 / rank) for rank, chunk_id in enumerate(self.lexical(query, limit), 1)]

    def identifier_matches(self, query: str) -> list[tuple[str, int]]:
        """(id, n) for chunks holding a rare code of the query found in only n chunks (see docqa.archive.fusion);
        a backend that cannot count them cheaply finds none."""
        return []
