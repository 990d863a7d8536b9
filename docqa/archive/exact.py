"""Exact nearest-neighbour search over the vectors a local Chroma store holds, read from its files.

For a store of up to EXACT_LIMIT chunks, comparing the query with every vector is faster than opening Chroma's
engine (~40 ms a process: importing its 59 MB library, starting it, loading the HNSW index), and exact. A cold
`docqa search` then costs little more than a lexical one. The vectors are where Chroma keeps them
(chromadb 1.5, checked by tests/test_exact_search.py against Chroma's own answers):
- saved in the vector segment's hnswlib files up to the segment's max_seq_id (chroma.sqlite3): data_level0.bin
  holds each element's vector and label, index_metadata.pickle maps the live labels to ids (a deleted one is
  not there);
- after that, in the write log (embeddings_queue): adds, updates, upserts and deletes, in order; a store
  smaller than Chroma's sync threshold has all its vectors there.
Anything else (another layout, a space other than cosine, an encoding other than FLOAT32, a count that differs
from Chroma's own records) raises UnknownLayout, and the caller asks Chroma's engine instead. Read-only: it
writes nothing, and holds no file open after loading.
"""

from __future__ import annotations

import pickle
import sqlite3
import struct
from pathlib import Path

import numpy as np

EXACT_LIMIT = 20_000  # vectors; ~2 ms a query at the limit on 2 cores, where a first HNSW query costs more
_ADD, _UPDATE, _UPSERT, _DELETE = 0, 1, 2, 3  # chromadb's operation codes in embeddings_queue


class UnknownLayout(Exception):
    """The store's files are not as this reader knows them, or hold too many vectors for it: use the engine."""


class ExactReader:
    """Every vector of the collection in memory; nearest() compares the query with all of them."""

    def __init__(self, store_dir: Path, collection: str) -> None:
        chroma_dir = store_dir / "chroma"
        path = chroma_dir / "chroma.sqlite3"
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise UnknownLayout(str(exc)) from None
        try:
            with db:
                self.ids, self._vectors = _read(db, chroma_dir, collection)
        except (sqlite3.Error, OSError, ValueError, KeyError, TypeError, struct.error, pickle.UnpicklingError,
                EOFError, AttributeError) as exc:
            raise UnknownLayout(f"{type(exc).__name__}: {exc}") from None
        finally:
            db.close()

    def nearest(self, vectors: list[list[float]], n_results: int) -> tuple[list[str], list[float]]:
        """(ids, cosine distances) of the `n_results` nearest chunks to the first vector, nearest first."""
        if not self.ids or n_results < 1:
            return [], []
        query = np.asarray(vectors[0], dtype=np.float32)
        query /= np.linalg.norm(query) or 1.0
        distances = 1.0 - self._vectors @ query
        n = min(n_results, len(self.ids))
        head = np.argpartition(distances, n - 1)[:n] if n < len(self.ids) else np.arange(n)
        order = head[np.lexsort((head, distances[head]))]  # nearest first; ties in a fixed order
        return [self.ids[k] for k in order], [float(distances[k]) for k in order]

    def close(self) -> None:
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self.ids = []


def _read(db: sqlite3.Connection, chroma_dir: Path, collection: str) -> tuple[list[str], np.ndarray]:
    found = db.execute("SELECT id FROM collections WHERE name = ?", (collection,)).fetchone()
    if found is None:
        return [], np.zeros((0, 0), dtype=np.float32)
    (collection_id,) = found
    spaces = db.execute("SELECT str_value FROM collection_metadata WHERE collection_id = ? AND key = 'hnsw:space'",
                        (collection_id,)).fetchall()
    if spaces != [("cosine",)]:
        raise UnknownLayout(f"space {spaces}")
    segments = dict(db.execute("SELECT scope, id FROM segments WHERE collection = ?", (collection_id,)).fetchall())
    saved = db.execute("SELECT seq_id FROM max_seq_id WHERE segment_id = ?", (segments["VECTOR"],)).fetchone()
    ids, matrix = _saved_vectors(chroma_dir / segments["VECTOR"]) if saved else ([], None)
    log = db.execute("SELECT operation, id, vector, encoding FROM embeddings_queue WHERE topic LIKE ? AND seq_id > ? "
                     "ORDER BY seq_id", (f"%/{collection_id}", saved[0] if saved else -1)).fetchall()
    if len(ids) + len(log) > 2 * EXACT_LIMIT:
        raise UnknownLayout("too many vectors to compare with each")
    changes = _replay(log, set(ids))
    if changes:
        kept = [k for k, chunk_id in enumerate(ids) if chunk_id not in changes]
        added = {chunk_id: vector for chunk_id, vector in changes.items() if vector is not None}
        parts = ([matrix[kept]] if matrix is not None and len(matrix) else []) + \
            ([np.stack(list(added.values()))] if added else [])
        ids = [ids[k] for k in kept] + list(added)
        matrix = np.concatenate(parts).astype(np.float32, copy=False) if parts else None
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)  # Chroma saves them normalised
    (held,) = db.execute("SELECT count(*) FROM embeddings WHERE segment_id = ?", (segments["METADATA"],)).fetchone()
    if held != len(ids):
        raise UnknownLayout(f"{len(ids)} vectors found where Chroma's records hold {held}")
    if len(ids) > EXACT_LIMIT:
        raise UnknownLayout("too many vectors to compare with each")
    return ids, matrix if matrix is not None else np.zeros((0, 0), dtype=np.float32)


def _replay(log: list[tuple[int, str, bytes | None, str | None]], saved: set[str]) -> dict[str, np.ndarray | None]:
    """What the write log changes, in order: {id: its vector now, or None if deleted}."""
    changes: dict[str, np.ndarray | None] = {}
    for operation, chunk_id, blob, encoding in log:
        held = changes[chunk_id] is not None if chunk_id in changes else chunk_id in saved
        if operation == _DELETE:
            changes[chunk_id] = None
            continue
        if operation not in (_ADD, _UPDATE, _UPSERT):
            raise UnknownLayout(f"operation {operation}")
        if (operation == _ADD and held) or (operation == _UPDATE and not held):
            continue  # as Chroma does: an add of an id it holds, or an update of one it does not, changes nothing
        if blob is None:
            if not held:
                raise UnknownLayout("a new id without a vector")
            continue  # the metadata changed, not the vector: Chroma keeps the saved one
        if encoding != "FLOAT32":
            raise UnknownLayout(f"encoding {encoding}")
        changes[chunk_id] = np.frombuffer(blob, dtype="<f4")
    return changes


def _saved_vectors(directory: Path) -> tuple[list[str], np.ndarray]:
    """The ids and vectors of the live elements in the segment's saved hnswlib index (its header layout: see
    docqa.archive.health.index_file_problems); hnswlib keeps cosine-space vectors normalised."""
    header = (directory / "header.bin").read_bytes()
    _version, _offset, _capacity, elements, record, label_at, data_at = struct.unpack("<I6Q", header[:52])
    if not elements:
        return [], np.zeros((0, 0), dtype=np.float32)
    if elements > 2 * EXACT_LIMIT:
        raise UnknownLayout("too many vectors to compare with each")
    with (directory / "index_metadata.pickle").open("rb") as file:
        metadata = _PlainUnpickler(file).load()
    live: dict[int, str] = metadata["label_to_id"]
    dimension = (label_at - data_at) // 4
    if dimension < 1 or label_at + 8 > record:
        raise UnknownLayout(f"record of {record} bytes: vectors at {data_at}, labels at {label_at}")
    level0 = np.fromfile(directory / "data_level0.bin", dtype=np.uint8, count=elements * record)
    if level0.size != elements * record:
        raise UnknownLayout("data_level0.bin is shorter than its header says")
    level0 = level0.reshape(elements, record)
    labels = level0[:, label_at : label_at + 8].copy().view("<u8").ravel()
    rows = np.flatnonzero(np.isin(labels, np.fromiter(live, dtype=np.uint64, count=len(live))))
    if len(rows) != len(live):
        raise UnknownLayout(f"{len(live)} live labels, {len(rows)} found in data_level0.bin")
    vectors = np.ascontiguousarray(level0[rows, data_at : data_at + 4 * dimension]).view("<f4")
    return [live[label] for label in labels[rows].tolist()], vectors


class _PlainUnpickler(pickle.Unpickler):
    """Reads dicts, lists, numbers and strings only (all this file holds): a pickle in a store someone else
    made cannot run code here."""

    def find_class(self, module: str, name: str) -> None:  # type: ignore[override]
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")
