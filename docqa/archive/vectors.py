"""A local store's vectors checked against its catalog, and rebuilt from the catalog's chunk texts when they
are damaged or missing (by the next writer, or `docqa repair`)."""

from __future__ import annotations

import contextlib
import fcntl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from docqa.archive.health import (
    DiskFull,
    ReadOnlyStore,
    StoreDamaged,
    chroma_database_problem,
)
from docqa.archive.records import StoreError
from docqa.chunking import Chunk

if TYPE_CHECKING:
    from docqa.archive.store import ArchivalStore

_SAMPLE = 8  # committed ids fetched from Chroma per check: enough to catch an index that lost part of itself


def vector_problem(store: ArchivalStore) -> str | None:
    """What is wrong with the store's vectors, or None (local stores, under the write lock).

    A client's count() alone is no check: after a deleted or emptied Chroma database it answers 0 without
    a word, and after a lost HNSW file it answers the right number while queries find one vector in a
    thousand. So the count is compared with the catalog's, a few committed ids are fetched with their
    embeddings (which fails on a damaged index), and one query must find as many vectors as it asks for.
    Costs a few milliseconds once the index is loaded, which the write that follows needs anyway.
    """
    catalog = store.catalog
    if catalog.get_meta("vectors_rebuild"):
        return "an earlier rebuild was interrupted"
    committed = catalog.total_chunks()
    try:
        store._check_vector_files()
    except StoreDamaged as exc:
        return exc.detail
    problem = None
    for _ in range(2):  # once more with a fresh client before calling it damage
        try:
            with store._chroma(check=False) as collection:
                held = collection.count()  # a client's first call loads the index from disk
                if held < committed:
                    return f"Chroma holds {held} vectors, the catalog {committed} committed chunks"
                sample = catalog.sample_ids(_SAMPLE)
                if not sample:
                    return None
                got = collection.get(ids=sample, include=["embeddings"])
                if len(got["ids"]) < len(sample):
                    return f"{len(sample) - len(got['ids'])} of {len(sample)} committed chunks are missing from Chroma"
                wanted = min(10, held)
                found = collection.query(query_embeddings=[list(got["embeddings"][0])], n_results=wanted,
                                         include=[])
                if len(found["ids"][0]) < wanted:
                    return f"the vector index finds {len(found['ids'][0])} of the {wanted} vectors asked for"
            return None
        except (DiskFull, ReadOnlyStore):
            raise
        except StoreError as exc:
            problem = getattr(exc, "detail", str(exc))
            store._chroma_seen = None
    return problem


def rebuild_vectors(store: ArchivalStore, problem: str) -> Path | None:
    """Make the collection's vectors again from the catalog's committed chunks (under the write lock); return
    where a damaged Chroma directory was moved, if it had to be.

    The catalog holds the text of every committed chunk, so the vectors are made again: one embedding pass
    over the store. A rebuild that is itself interrupted is resumed by the next writer (the catalog records
    it until it is done).
    """
    catalog = store.catalog
    rows = catalog.committed_rows()
    print(f"docqa: the vector index in {store.settings.store_dir} cannot be loaded ({problem}); rebuilding it "
          f"from the catalog: {len(rows)} chunks to embed again...", file=sys.stderr)
    catalog.set_meta("vectors_rebuild", "started")
    store._rebuilding = True  # the files are known to be missing or damaged: open them all the same
    try:
        moved = _fresh_collection(store)
        for generation in catalog.orphans():
            catalog.forget_orphan(generation)  # their vectors went with the old collection
        size = store.settings.batch_size * 4
        # On a terminal, a bar: a large store takes minutes to embed again (none in logs or pipes).
        from tqdm import tqdm

        with tqdm(total=len(rows), desc="rebuilding vectors", unit="chunk", disable=not sys.stderr.isatty(),
                  leave=False, mininterval=0.2) as bar:
            for start in range(0, len(rows), size):
                batch = rows[start : start + size]
                vectors = store.embedder.embed([r[1] for r in batch], store.settings.batch_size)
                store.add_vectors([(generation, source, Chunk(index, text, page_start, page_end, 0, section))
                                   for _id, text, source, generation, index, page_start, page_end, section
                                   in batch], vectors)
                bar.update(len(batch))
    finally:
        store._rebuilding = False
    catalog.set_meta("vectors_rebuild", "")
    return moved


def _fresh_collection(store: ArchivalStore) -> Path | None:
    """An empty collection in place of the damaged one: dropped through Chroma when its database is sound,
    else (Chroma cannot even drop a collection then) with the whole `chroma/` directory moved aside.

    Moving it aside also takes the vectors of the store's other collections, if any: each is rebuilt from its
    own catalog by its next writer, which finds its vectors missing.
    """
    if chroma_database_problem(store.chroma_dir) is None:
        try:
            with store._chroma():
                store._client.delete_collection(store.settings.collection)
                store._open_collection()
            return None
        except (DiskFull, ReadOnlyStore):
            raise
        except StoreError:
            pass
    return move_chroma_aside(store)


def move_chroma_aside(store: ArchivalStore) -> Path | None:
    """Close this process's Chroma and rename the store's `chroma/` to `chroma.damaged-<time>` (nothing is
    deleted); the next call opens a new, empty one."""
    store._close_reader()
    if store._client is not None:
        with contextlib.suppress(Exception):  # an engine that failed to load may fail to close too
            store._client.close()
        store._client = store._collection = None
    store._chroma_seen = None
    return set_chroma_aside(store.settings.store_dir)


def set_chroma_aside(store_dir: Path) -> Path | None:
    """Rename `store_dir/chroma` to `chroma.damaged-<time>` under the Chroma lock (None if there is none)."""
    chroma_dir = store_dir / "chroma"
    if not chroma_dir.exists():
        return None
    target = aside(chroma_dir)
    with open(store_dir / "chroma.lock", "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        chroma_dir.rename(target)
    print(f"docqa: moved the damaged Chroma directory to {target}", file=sys.stderr)
    return target


def aside(path: Path) -> Path:
    """A free name beside `path` to move a damaged file to: `<name>.damaged-<time>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    return target
