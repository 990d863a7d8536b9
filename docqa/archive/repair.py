"""`docqa repair`: a local store whose catalog or vectors are damaged, rebuilt from the other side.

The two halves of a store hold the same chunks: the catalog every committed chunk's text and place, Chroma
every chunk's vector with the same text and place in its metadata. So either can be made again from the
other. Vectors from the catalog: one embedding pass (docqa.archive.vectors). The catalog from Chroma: its
documents are read back, and each file still on disk unchanged is recognised (its hash gives the version
Chroma holds), so the next ingest finds it unchanged; a file changed or gone since is kept as Chroma has it and
re-embedded by the next ingest of it. Nothing damaged is deleted: it is renamed `<name>.damaged-<time>`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from docqa.archive.chroma import local_client
from docqa.archive.health import (
    ReadOnlyStore,
    StoreDamaged,
    chroma_database_problem,
    chroma_error,
    chroma_population,
    is_interrupt,
    read_only,
)
from docqa.archive.records import StoreError, check_collection_name
from docqa.archive.sqlite_catalog import SqliteCatalog
from docqa.archive.store import ArchivalStore, chunking_of, generation_of, write_lock
from docqa.archive.vectors import aside, rebuild_vectors, set_chroma_aside, vector_problem
from docqa.embeddings.transformer import Embedder
from docqa.settings import Settings


@dataclass
class RepairReport:
    """What `docqa repair` found and did."""

    store: str
    collection: str
    problems: list[str] = field(default_factory=list)
    catalog: dict[str, Any] = field(default_factory=lambda: {"rebuilt_from_chroma": False, "documents": 0,
                                                             "reembed_on_next_ingest": [], "moved_to": None})
    vectors: dict[str, Any] = field(default_factory=lambda: {"rebuilt_from_catalog": False, "chunks": 0,
                                                             "moved_to": None})
    versions_cleaned: int = 0
    lost: bool = False  # both halves were damaged: the files must be ingested again

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> list[str]:
        lines = [f"found: {problem}" for problem in self.problems]
        catalog, vectors = self.catalog, self.vectors
        if self.lost:
            lines.append("the catalog and the vectors were both damaged: nothing to rebuild either from; the damaged "
                         "files were moved aside: ingest your files again (docqa ingest)")
        if catalog["rebuilt_from_chroma"]:
            again = catalog["reembed_on_next_ingest"]
            lines.append(f"catalog rebuilt from Chroma: {catalog['documents']} documents"
                         + (f"; {len(again)} of them changed or gone since (their files are embedded again by "
                            "the next `docqa ingest` of them)" if again else ""))
        if vectors["rebuilt_from_catalog"]:
            lines.append(f"vectors rebuilt from the catalog: {vectors['chunks']} chunks")
        for half in (catalog, vectors):
            if half["moved_to"]:
                lines.append(f"the damaged files were kept as {half['moved_to']}")
        if not self.problems:
            lines.append(f"nothing to repair: the catalog ({catalog['documents']} documents) and the vectors agree")
        return lines


def repair(settings: Settings, embedder: Embedder | None = None) -> RepairReport:
    """Check a local store and rebuild what is damaged (under its write lock); see the module's docstring."""
    if settings.chroma_url:
        raise StoreError("docqa repair works on a local store: a Chroma server keeps its own files (see its docs)")
    check_collection_name(settings.collection)
    store_dir, collection = settings.store_dir, settings.collection
    catalog_path = store_dir / f"{collection}.catalog.sqlite3"
    chroma_dir = store_dir / "chroma"
    if not store_dir.is_dir():
        raise StoreError(f"no store at {store_dir}; pass --store DIR")
    if read_only(store_dir) or read_only(catalog_path):
        raise ReadOnlyStore(f"read-only store: {store_dir} cannot be written by this user, so it cannot be repaired")
    report = RepairReport(str(store_dir), collection)
    with write_lock(store_dir, collection):
        state = catalog_state(catalog_path)
        held = chroma_population(chroma_dir, collection)
        if state == "missing" and not held:
            raise StoreError(f"no collection '{collection}' in the store at {store_dir}")
        if state == "empty" and held == 0:
            return report  # a store with nothing in it
        if state != "sound":
            report.problems.append(f"the catalog {catalog_path} is {state}")
            if held and chroma_database_problem(chroma_dir) is None:
                try:
                    _rebuild_catalog(settings, embedder, catalog_path, report)
                except StoreDamaged as exc:
                    report.problems.append(f"Chroma cannot be read either ({exc.detail})")
                    report.lost = True
            else:
                report.lost = True
            if report.lost:
                _lose_both(catalog_path, chroma_dir, state, report)
                return report
        store = ArchivalStore(settings, embedder, check=False)
        try:
            problem = chroma_database_problem(chroma_dir)
            problem = f"Chroma's database is damaged ({problem})" if problem else vector_problem(store)
            if problem:
                report.problems.append(problem)
                moved = rebuild_vectors(store, problem)
                report.vectors.update(rebuilt_from_catalog=True, chunks=store.catalog.total_chunks(),
                                      moved_to=str(moved) if moved else None)
            report.versions_cleaned = store.recover()
            report.catalog["documents"] = len(store.catalog.documents())
        finally:
            store.catalog.close()
    return report


def catalog_state(path: Path) -> str:
    """"sound", "missing", "empty" (nothing in it: 0 bytes, no tables, or no document nor clean-up) or
    "damaged (<what SQLite says>)": SQLite's quick_check reads the whole file, as no command does."""
    if not path.exists():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                return f"damaged ({check})"
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"documents", "orphans"} <= tables:
                return "empty"
            if not db.execute("SELECT 1 FROM documents UNION ALL SELECT 1 FROM orphans LIMIT 1").fetchone():
                return "empty"
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"damaged ({exc})"
    return "sound"


def _rebuild_catalog(settings: Settings, embedder: Embedder | None, path: Path, report: RepairReport) -> None:
    """Write a new catalog from what Chroma holds, beside the old one, then put it in the old one's place."""
    chunks, order, model_matches = _read_chroma(settings, embedder)
    if model_matches is False:
        raise StoreError(f"the vectors in {settings.store_dir / 'chroma'} were not made with "
                         f"{settings.embedding_backend}:{settings.embedding_model}: pass the --embedding-model and "
                         "--embedding-backend the store was built with")
    total = sum(len(entry["rows"]) for entry in chunks.values())
    print(f"docqa: rebuilding the catalog {path} from Chroma ({total} chunks)...", file=sys.stderr)
    building = path.with_name(path.name + ".rebuilding")
    for leftover in _sqlite_files(building):
        leftover.unlink()
    catalog = SqliteCatalog(building)
    by_source: dict[str, list[str]] = {}
    for generation in order:  # oldest write first
        by_source.setdefault(chunks[generation]["source"], []).append(generation)
    chunking = chunking_of(settings)
    for source, generations in by_source.items():
        for generation in generations:
            catalog.begin(source, generation)  # all pending: the one made current below, the others cleaned
        current, file_hash = _current_version(source, generations, chunks, chunking)
        if current is None:
            report.problems.append(f"{source}: Chroma holds no complete version of it (ingest it again)")
            continue
        rows = chunks[current]["rows"]
        catalog.add_chunks(current, source, [(f"{current}:{i}", i, r[1], r[2], _sha256(r[0]), r[0], r[3])
                                             for i, r in sorted(rows.items())])
        catalog.commit(source, current, file_hash, max(r[2] for r in rows.values()), len(rows))
        if not file_hash:
            report.catalog["reembed_on_next_ingest"].append(source)
        report.catalog["documents"] += 1
    catalog.set_meta("embedding_model", f"{settings.embedding_backend}:{settings.embedding_model}")
    catalog.close()
    moved = _move_aside(path) if path.exists() else None
    for suffix in ("", "-wal", "-shm"):
        built = Path(f"{building}{suffix}")
        if built.exists():
            built.rename(f"{path}{suffix}")
    report.catalog.update(rebuilt_from_chroma=True, moved_to=str(moved) if moved else None)


def _read_chroma(settings: Settings, embedder: Embedder | None) -> tuple[dict[str, Any], list[str], bool | None]:
    """(generation -> {"source", "rows": {chunk: (text, page_start, page_end, section)}}, generations in the
    order of their last write, whether the vectors were made by this run's model: None if they cannot be read)."""
    chroma_dir = settings.store_dir / "chroma"
    chunks: dict[str, Any] = {}
    order: dict[str, int] = {}
    matches: bool | None = None
    with open(settings.store_dir / "chroma.lock", "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        client = None
        try:
            client = local_client(settings.store_dir)
            collection = client.get_collection(settings.collection)
            position = 0
            while True:
                page = collection.get(include=["documents", "metadatas"], limit=5000, offset=position)
                for chunk_id, text, meta in zip(page["ids"], page["documents"], page["metadatas"], strict=True):
                    generation, _, index = chunk_id.rpartition(":")
                    entry = chunks.setdefault(generation, {"source": meta["source"], "rows": {}})
                    entry["rows"][int(index)] = (text, int(meta["page_start"]), int(meta["page_end"]),
                                                 str(meta.get("section") or ""))
                    order[generation] = position
                    position += 1
                if len(page["ids"]) < 5000:
                    break
            matches = _same_model(collection, settings, embedder)
        except BaseException as exc:
            if is_interrupt(exc) or isinstance(exc, StoreError):
                raise
            raise chroma_error(chroma_dir, exc) from None
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
    return chunks, sorted(order, key=order.__getitem__), matches


def _same_model(collection: Any, settings: Settings, embedder: Embedder | None) -> bool | None:
    """Whether this run's embedding model made Chroma's vectors (one chunk embedded again and compared);
    None if Chroma cannot hand its vectors back (a damaged index: they are made again anyway)."""
    try:
        sample = collection.get(limit=1, include=["embeddings", "documents"])
    except Exception:  # noqa: BLE001 - a damaged index; the vectors are rebuilt from the texts afterwards
        return None
    if not sample["ids"]:
        return None
    stored = np.asarray(sample["embeddings"][0], dtype=np.float32)
    if embedder is None:
        from docqa.embeddings.load import load_embedder

        embedder = load_embedder(settings.embedding_model, settings.embedding_backend)
    fresh = np.asarray(embedder.embed([sample["documents"][0]]), dtype=np.float32)[0]
    if stored.shape != fresh.shape:
        return False
    if not np.linalg.norm(stored):
        return None  # a damaged length.bin zeroes the vectors Chroma hands back; they are made again
    cosine = float(stored @ fresh / (np.linalg.norm(stored) * np.linalg.norm(fresh) or 1.0))
    return cosine > 0.99


def _current_version(source: str, generations: list[str], chunks: dict[str, Any],
                     chunking: str) -> tuple[str | None, str]:
    """(the version of `source` to make current, its file's hash or "" if the file changed or is gone).

    The file on disk, if unchanged, names its version. Otherwise the last complete version written wins:
    several are left only by an ingest that died between its commit and its clean-up."""
    complete = [g for g in generations if sorted(chunks[g]["rows"]) == list(range(len(chunks[g]["rows"])))]
    path = Path(source)
    with contextlib.suppress(OSError):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            file_hash = digest.hexdigest()
            if generation_of(source, file_hash, chunking) in complete:
                return generation_of(source, file_hash, chunking), file_hash
    return (complete[-1] if complete else None), ""


def _lose_both(catalog_path: Path, chroma_dir: Path, state: str, report: RepairReport) -> None:
    """Both halves are damaged: move both aside, leaving an empty store to ingest into again."""
    if state != "missing":
        report.catalog["moved_to"] = str(_move_aside(catalog_path))
    moved = set_chroma_aside(chroma_dir.parent)
    report.vectors["moved_to"] = str(moved) if moved else None


def _move_aside(path: Path) -> Path:
    """Rename a catalog and its -wal/-shm files to `<name>.damaged-<time>` (SQLite finds them under it)."""
    target = aside(path)
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{target}{suffix}")
    return target


def _sqlite_files(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}{s}") for s in ("", "-wal", "-shm")) if p.exists()]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
