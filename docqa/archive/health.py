"""What can be wrong with a local store's files, found before it does harm and said in one line.

A local store is two databases that must agree: the catalog (SQLite: what is committed, and every committed
chunk's text) and Chroma's directory (its own SQLite file plus the HNSW vector index of each collection). Either
can be damaged by a crash, a full disk, a bad copy or a careless `rm`. chromadb reports damage in many ways
(InternalError, InvalidArgumentError, a Rust panic, which is a BaseException) or not at all: a deleted `chroma/`
or an emptied chroma.sqlite3 opens as an empty store, a missing HNSW file can make a query return one hit
where there should be ten, and a truncated header.bin crashes the process that loads it (SIGSEGV). So:

- `catalog_error` and `chroma_error` turn whatever a layer raised into one StoreError naming the file and the
  way out (`docqa repair`, or free some space, or a read-only store);
- `index_file_problems` checks a collection's HNSW files without loading them (what would crash the process);
- `chroma_population` counts a collection's vectors from Chroma's SQLite file directly (cheap; no chromadb),
  which tells an empty catalog beside a populated Chroma from a new store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import struct
from pathlib import Path

from docqa.archive.records import StoreError

REPAIR = "run `docqa repair`"


class StoreDamaged(StoreError):
    """A file of the store is damaged or missing; `docqa repair` rebuilds it from the other side."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message  # what is wrong, without the way out (for a repair's own notice)


class DiskFull(StoreError):
    """The disk holding the store is full; what was committed before is intact."""


class ReadOnlyStore(StoreError):
    """The store cannot be written (a read-only mount, or files this user may only read)."""


def is_interrupt(exc: BaseException) -> bool:
    """Exceptions that must pass through every translation: the user or the interpreter stopping us."""
    return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit)


_DISK_FULL = ("no space left on device", "database or disk is full", "disk is full", "(code: 13)",
              "quota exceeded")


def says_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(marker in str(exc).lower() for marker in _DISK_FULL)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc`, from any layer (SQLite, Chroma, the OS), says the disk is full."""
    return isinstance(exc, DiskFull) or (not isinstance(exc, StoreError) and says_disk_full(exc))


def catalog_error(path: Path, exc: sqlite3.Error) -> StoreError | None:
    """The StoreError for what SQLite raised on the catalog at `path`, or None if it is no fault of the file."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text:
        return StoreDamaged(f"the catalog {path} is damaged ({text}): {REPAIR} to rebuild it from the vector store")
    if name == "SQLITE_FULL" or says_disk_full(exc):
        return DiskFull(f"the disk holding {path.parent} is full ({text}): free some space and run the command "
                        "again (what was stored before is intact)")
    if name.startswith("SQLITE_IOERR"):  # what SQLite says when it cannot even create its -shm file
        space = free_space(path.parent)
        if space is not None and space < LOW_SPACE:
            return DiskFull(f"the disk holding {path.parent} is full ({text}): free some space and run the "
                            "command again (what was stored before is intact)")
        return StoreError(f"cannot read or write the catalog {path} ({text}): check the disk")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return ReadOnlyStore(f"read-only store: cannot write the catalog {path} ({text}); list, search and ask "
                             "work, ingest, delete and repair need write access")
    return None


def chroma_error(chroma_dir: Path, exc: BaseException, free_bytes: int | None = None) -> StoreError:
    """The StoreError for what a local Chroma call raised (any exception type: Chroma's Rust core panics too).

    `free_bytes`, the free space on Chroma's disk if known: a full disk shows in Chroma's messages only as
    "Failed to apply logs" or "Error in compaction" at times, so little room left is taken as the cause.
    """
    if isinstance(exc, StoreError):
        return exc
    text = " ".join(str(exc).split())[:240] or type(exc).__name__
    lowered = text.lower()
    if says_disk_full(exc) or (free_bytes is not None and free_bytes < LOW_SPACE):
        return DiskFull(f"the disk holding {chroma_dir} is full ({text}): free some space, then {REPAIR} if "
                        "searches fail (what was committed before is intact)")
    if "readonly database" in lowered or "read-only file system" in lowered:
        return ReadOnlyStore(f"read-only store: Chroma cannot write {chroma_dir} ({text})")
    if "malformed" in lowered or "not a database" in lowered:
        return StoreDamaged(f"Chroma's database {chroma_dir / 'chroma.sqlite3'} is damaged ({text}): {REPAIR}: it "
                            "rebuilds the vectors from the catalog", text)
    return StoreDamaged(f"the vector index in {chroma_dir} cannot be read ({text}): {REPAIR} (or run `docqa "
                        "ingest` again): it rebuilds the index from the catalog", text)


# Below this much free space, a Chroma failure is taken to be the full disk's doing.
LOW_SPACE = 1 << 20


def free_space(path: Path) -> int | None:
    """Bytes free for this user on the filesystem holding `path` (None if it cannot be told)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def read_only(path: Path) -> bool:
    """Whether this process cannot write `path` (a read-only mount, an immutable file, another user's files)."""
    return path.exists() and not os.access(path, os.W_OK)


# -- Chroma's files, read without chromadb ----------------------------------------------------------
def _chroma_db(chroma_dir: Path) -> sqlite3.Connection | None:
    path = chroma_dir / "chroma.sqlite3"
    if not path.exists() or path.stat().st_size == 0:
        return None
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def collection_segments(chroma_dir: Path, collection: str) -> dict[str, str] | None:
    """{scope: segment id} of the collection's segments (VECTOR, METADATA), {} if Chroma has no such collection,
    None if Chroma's SQLite file cannot tell (damaged, or a chromadb that stores collections otherwise)."""
    try:
        db = _chroma_db(chroma_dir)
        if db is None:
            return {}
        with db:
            rows = db.execute("SELECT s.scope, s.id FROM segments s JOIN collections c ON s.collection = c.id "
                              "WHERE c.name = ?", (collection,)).fetchall()
        db.close()
    except sqlite3.Error:
        return None
    return {scope: segment for scope, segment in rows}


def chroma_population(chroma_dir: Path, collection: str) -> int | None:
    """How many vectors Chroma's own records hold for the collection (0 if none; None if they cannot be read).

    chromadb's count() would import chromadb (about a second) and load the vector index; this is one query.
    """
    segments = collection_segments(chroma_dir, collection)
    if not segments:
        return None if segments is None else 0
    try:
        db = _chroma_db(chroma_dir)
        assert db is not None
        with db:
            (count,) = db.execute("SELECT count(*) FROM embeddings WHERE segment_id = ?",
                                  (segments.get("METADATA", ""),)).fetchone()
        db.close()
    except sqlite3.Error:
        return None
    return int(count)


def chroma_database_problem(chroma_dir: Path) -> str | None:
    """What is wrong with chroma.sqlite3 itself (SQLite's quick_check), or None: damage there means Chroma
    cannot even drop a collection, so its directory has to be set aside whole."""
    path = chroma_dir / "chroma.sqlite3"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if result == "ok" else str(result)


_INDEX_FILES = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle")


def index_file_problems(chroma_dir: Path, collection: str, deep: bool = False) -> list[str]:
    """What is wrong with the collection's saved HNSW files, judged from their sizes and header alone.

    Chroma loads them without checks: a truncated header.bin crashed the process that loaded it (SIGSEGV),
    other damage made queries fail or return too few results. The layout is hnswlib's (chromadb 1.5):
    header.bin is 100 bytes, u32 version then u64 offset, max_elements, cur_element_count, size_per_element;
    data_level0.bin holds max_elements records of size_per_element; length.bin 4 bytes per element. A
    collection that has not saved its index yet (fewer vectors than hnsw:sync_threshold) has nothing to check.
    `deep`: check the graph's links too (reads the index: see _graph_problems).
    """
    segments = collection_segments(chroma_dir, collection)
    if segments is None or "VECTOR" not in segments:
        return []  # no collection yet, or Chroma's database cannot say (chroma_database_problem will)
    directory = chroma_dir / segments["VECTOR"]
    files = {name: directory / name for name in _INDEX_FILES}
    present = {name for name, path in files.items() if path.exists()}
    if not present:
        return []  # never saved: Chroma answers from its write log
    if "header.bin" not in present:
        return [f"{files['header.bin']} is missing"]
    header = files["header.bin"].read_bytes()
    if len(header) != 100:
        return [f"{files['header.bin']} is {len(header)} bytes, not 100"]
    _version, _offset, capacity, elements, record = struct.unpack("<I4Q", header[:36])
    if elements == 0 and "index_metadata.pickle" not in present:
        return []
    problems = [f"{files[name]} is missing" for name in _INDEX_FILES if name not in present]
    if "index_metadata.pickle" in present and files["index_metadata.pickle"].stat().st_size == 0:
        problems.append(f"{files['index_metadata.pickle']} is empty")
    if "data_level0.bin" in present:
        size = files["data_level0.bin"].stat().st_size
        if not elements * record <= size <= max(capacity, elements) * record:
            problems.append(f"{files['data_level0.bin']} is {size} bytes; its header says {elements} vectors "
                            f"of {record} bytes")
    if "length.bin" in present and files["length.bin"].stat().st_size < 4 * elements:
        problems.append(f"{files['length.bin']} is shorter than its {elements} vectors")
    if deep and not problems:
        problems += _graph_problems(files, header)
    return problems


def _graph_problems(files: dict[str, Path], header: bytes) -> list[str]:
    """Whether every link of the HNSW graph points at a vector of the index: a garbled link made Chroma read
    outside its arrays and crash the process (SIGSEGV) at the first query. Reads the whole graph (0.17 s
    per 100,000 vectors from the page cache); the vectors themselves have no check to make."""
    import numpy as np

    _version, _offset, _capacity, elements, record, _label, _data = struct.unpack("<I6Q", header[:52])
    top_level, entry = struct.unpack("<iI", header[52:60])
    links_per_level, links_level0, _m = struct.unpack("<3Q", header[60:84])
    if not elements:
        return []
    if entry >= elements or not 0 <= top_level < 64 or links_level0 * 4 + 4 > record:
        return [f"{files['header.bin']} is damaged (entry point {entry} of {elements} vectors, top level {top_level})"]
    level0 = np.memmap(files["data_level0.bin"], dtype=np.uint8, mode="r", shape=(elements, record))
    words = level0[:, : 4 + 4 * links_level0].copy().view("<u4")  # per vector: link count, then the links
    counts = words[:, 0] & 0xFFFF
    slots = np.arange(links_level0)[None, :] < counts[:, None]
    if (counts > links_level0).any() or (words[:, 1:][slots] >= elements).any():
        return [f"{files['data_level0.bin']} links to vectors that are not in the index"]
    upper = files["link_lists.bin"].read_bytes()
    block = 4 + 4 * links_per_level
    position = 0
    for _ in range(elements):  # per vector: its upper levels' size in bytes, then one block per level
        if position + 4 > len(upper):
            return [f"{files['link_lists.bin']} is shorter than its {elements} vectors"]
        (size,) = struct.unpack_from("<I", upper, position)
        position += 4
        if size % block or size // block > top_level or position + size > len(upper):
            return [f"{files['link_lists.bin']} is damaged"]
        for start in range(position, position + size, block):
            (count,) = struct.unpack_from("<I", upper, start)
            count &= 0xFFFF
            if count > links_per_level or any(link >= elements for link in
                                              struct.unpack_from(f"<{count}I", upper, start + 4)):
                return [f"{files['link_lists.bin']} links to vectors that are not in the index"]
        position += size
    return []


def index_bytes(chroma_dir: Path, collection: str) -> int:
    """The size of the collection's saved HNSW files: Chroma rewrites them whole when it saves the index."""
    segments = collection_segments(chroma_dir, collection) or {}
    directory = chroma_dir / segments.get("VECTOR", "-")
    return sum(p.stat().st_size for p in directory.glob("*") if p.is_file()) if directory.is_dir() else 0


def vector_file_problems(chroma_dir: Path, collection: str, committed: int, deep: bool = True) -> list[str]:
    """What is missing or damaged in Chroma's files, found without loading them, for a catalog holding
    `committed` chunks: chromadb opens a deleted or emptied database as a new, empty one, without a word.
    `deep`: check the graph's links too (index_file_problems)."""
    database = chroma_dir / "chroma.sqlite3"
    if committed:
        if not database.exists():
            return [f"{database} is missing, and the catalog holds {committed} chunks"]
        if database.stat().st_size == 0:
            return [f"{database} is empty, and the catalog holds {committed} chunks"]
        if collection_segments(chroma_dir, collection) == {}:
            return [f"{database} holds no collection '{collection}', and the catalog holds {committed} chunks"]
    return index_file_problems(chroma_dir, collection, deep)


def index_signature(chroma_dir: Path, collection: str) -> str:
    """The size and modification time of each saved HNSW file: what a deep check of them is good for."""
    segments = collection_segments(chroma_dir, collection) or {}
    directory = chroma_dir / segments.get("VECTOR", "-")
    parts = []
    for name in _INDEX_FILES:
        with contextlib.suppress(OSError):
            stat = (directory / name).stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return f"{directory.name} " + " ".join(parts)
