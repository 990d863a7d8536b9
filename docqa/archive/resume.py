"""Resuming an interrupted ingest: a re-run adopts the pending version a dead writer left of the same file.

A version's id is a hash of the file's path, its bytes and the chunking settings, and its chunk ids are
`<generation>:<index>` (docqa.archive.store.generation_of). So a re-run of a killed `docqa ingest` on the
same unchanged file, with the same settings, begins the very version the killed run left pending, and makes
the very same chunks: those both sides already hold need no embedding and no write. The version still
becomes visible all at once, when it commits; until then search shows none of it.

When a pending version is kept, adopted or removed:
- `docqa ingest` (`writing(resume=True)`) keeps, at its start, the pending versions whose writer is gone
  (a kill, Ctrl-C, a crash, a file over its time limit) instead of removing them. A file of the run that
  begins one of them again adopts it. At the end of the run, every kept version not adopted is removed:
  its file was not re-ingested, or changed (a changed file makes another version id), or is gone.
- Every other writer (`docqa delete`, the agent's archival_memory_insert, a vector index rebuild) removes
  them at its start, as before resume existed.
- A version is kept only if its writer is gone: locally the write lock proves it (one writer at a time);
  in server mode `Catalog.resumable` leaves out a live writer's version (its process runs on this machine,
  or its lease is fresh on another), and adopting re-marks it with this writer's identity and lease.

Each batch of an adopted version is checked against Chroma (one `get` of its ids, texts and metadata) and,
locally, against the catalog's rows: a chunk whose catalog row was written but whose Chroma write was cut
is embedded again, and so is one whose text or metadata differ (chunking code changed since).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from docqa.archive.records import chunk_id, chunk_metadata

if TYPE_CHECKING:
    from collections.abc import Mapping

    from docqa.archive.catalog import Catalog
    from docqa.chunking import Chunk


class Resuming:
    """The resume half of ArchivalStore (which gives it the catalog, its Chroma calls and `_remove`): keep,
    adopt, check and release the versions interrupted ingests left."""

    catalog: Catalog
    _resumable: Mapping[str, str] = MappingProxyType({})  # generation -> source, kept by recover(resume=True)
    _adopted: frozenset[str] = frozenset()

    def keep_resumable(self, orphans: Sequence[str]) -> list[str]:
        """Of the versions recover() would remove, keep those interrupted ingests left pending (for this run
        to adopt, or to release at its end); return the others."""
        self._resumable = MappingProxyType(self.catalog.resumable())
        self._adopted = frozenset()
        return [generation for generation in orphans if generation not in self._resumable]

    def adopt(self, generation: str) -> bool:
        """Whether `generation`, about to be begun, is a version an interrupted ingest left (it is then adopted)."""
        if generation in self._resumable:
            self._adopted |= {generation}
            return True
        return False

    def stored_already(self, items: Sequence[tuple[str, str, Chunk]]) -> set[str]:
        """The ids of these (generation, source, chunk) that Chroma and the catalog already hold exactly so."""
        ids = [chunk_id(generation, chunk) for generation, _, chunk in items]
        with self._chroma() as collection:
            got = collection.get(ids=ids, include=["documents", "metadatas"])
        found = dict(zip(got["ids"], zip(got["documents"], got["metadatas"], strict=True), strict=True))
        same = [i for i, (generation, source, chunk) in zip(ids, items, strict=True)
                if found.get(i) == (chunk.text, chunk_metadata(generation, source, chunk))]
        return self.catalog.known_chunks(same)

    def release_resumable(self) -> int:
        """Remove the versions kept at the start of this run that no file of it adopted; return how many.

        Only those still abandoned: in server mode another machine may have adopted one meanwhile."""
        left = [generation for generation in self._resumable if generation not in self._adopted]
        if left:
            abandoned = self.catalog.resumable()
            left = [generation for generation in left if generation in abandoned]
            self._remove(left)
        self._resumable = MappingProxyType({})
        self._adopted = frozenset()
        return len(left)
