"""The store's catalog in SQLite: which version of each document is current, chunk texts, FTS5 index.

Chroma holds the vectors; this file holds the truth about what is committed. A document version
("generation") is written as pending, its chunks go to both sides batch by batch, and one SQLite
transaction makes it current (the steps are docqa.archive.catalog's). Whatever a crash leaves behind
(pending generations, replaced ones not yet removed from Chroma) is recorded here and cleaned by
`ArchivalStore.recover`.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from docqa.archive.catalog import Catalog, Mark
from docqa.archive.records import ChunkRecord, DocumentRow
from docqa.archive.terms import match_any, query_terms

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY, generation TEXT NOT NULL, file_hash TEXT NOT NULL,
    pages INTEGER NOT NULL, chunks INTEGER NOT NULL, ingested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, generation TEXT NOT NULL, source TEXT NOT NULL,
    idx INTEGER NOT NULL, page_start INTEGER NOT NULL, page_end INTEGER NOT NULL,
    content_hash TEXT NOT NULL, text TEXT NOT NULL, section TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS chunks_generation ON chunks(generation);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='rowid', tokenize='unicode61');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.rowid, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.rowid, old.text); END;
-- generations whose vectors may still be in Chroma but must not be: pending (an ingest that has not
-- committed) or garbage (replaced or deleted documents)
CREATE TABLE IF NOT EXISTS orphans (generation TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Lexical search leaves out a term found in more than this share of the chunks (and in more than the
# floor), when the query has rarer ones: see Catalog._selective.
_COMMON_SHARE = 0.10
_COMMON_FLOOR = 5000
# ...and whatever the store's size, a term in more than this many: BM25 costs time per matching chunk, and
# at 1M chunks 10% let each term bring up to 100k of them (hybrid search p50 206 ms, lexical 183 ms,
# benchmarks/results/search_scale_1M.json). Such a term's idf is below log 50 there.
_COMMON_CEILING = 20_000

# A query term with a letter and a digit in it (E1234, zqx07marker, a UUID) is a code that embeddings cannot
# read; found in fewer than this many chunks, it points at them (see docqa.archive.fusion.add_identifier_bonuses).
_IDENTIFIER = re.compile(r"(?=.*[^\W\d_])(?=.*\d)")
_RARE_IDENTIFIER = 5

_CURRENT = "JOIN documents d ON d.source = c.source AND d.generation = c.generation"
_COLUMNS = "c.id, c.text, c.source, c.page_start, c.page_end, c.idx, c.content_hash, c.section"


class SqliteCatalog(Catalog):
    """SQLite side of the store (WAL mode: readers see the last committed state during an ingest)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        """`read_only`: a catalog this process may not write (a read-only mount, another user's files)."""
        self.path = path
        self.read_only = read_only
        if read_only:
            self.db = self._connect_read_only()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # A row that INSERT OR REPLACE replaces (a chunk written again by a resumed ingest) is deleted
            # through the delete trigger only with this on; otherwise its old FTS entry would stay behind.
            self.db.execute("PRAGMA recursive_triggers=ON")
            self.db.executescript(SCHEMA)
            self._add_section_column()
        self._writes = 0  # data_version only counts other connections' commits
        self._common: dict[str, bool] = {}  # query term -> in too many chunks to be worth scoring
        self._common_version = -1
        self._common_threshold = 0  # 0: keep every term
        self._generations: set[str] = set()  # current generations, for `committed`
        self._generations_version = -1
        self._reader: sqlite3.Connection | None = None  # lexical search's own connection (see _lexical_db)
        self._reader_lock = threading.Lock()

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes. SQLite reads a WAL database through its -shm file, which it must be
        able to create: where it cannot (a read-only directory, once the last writer removed it), the file is
        opened as immutable, which is safe there since nobody can change it either."""
        uri = self.path.resolve().as_uri()
        for mode in ("mode=ro", "mode=ro&immutable=1"):
            db = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=60, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                self._uri = f"{uri}?{mode}"
                return db
            except sqlite3.OperationalError:
                db.close()
                if "immutable" in mode:
                    raise
        raise AssertionError("unreachable")

    def checkpoint(self) -> None:
        """Move the write-ahead log into the database and empty it: the log only grows during an ingest and may
        hold megabytes the disk needs back (a failed checkpoint leaves it as it was)."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def close(self) -> None:
        self.db.close()
        if self._reader is not None:
            self._reader.close()

    def _add_section_column(self) -> None:
        """A store made before chunks kept their section has no such column: add it (existing rows get '')."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(chunks)")}
        if "section" not in columns:
            self.db.execute("ALTER TABLE chunks ADD COLUMN section TEXT NOT NULL DEFAULT ''")

    # -- metadata -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._writes += 1
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- documents ------------------------------------------------------------------------------
    def document(self, source: str) -> DocumentRow | None:
        row = self.db.execute(
            "SELECT source, generation, file_hash, pages, chunks FROM documents WHERE source = ?", (source,)
        ).fetchone()
        return DocumentRow(*row) if row else None

    def documents(self) -> list[DocumentRow]:
        rows = self.db.execute("SELECT source, generation, file_hash, pages, chunks FROM documents ORDER BY source")
        return [DocumentRow(*row) for row in rows]

    def is_empty(self) -> bool:
        """Whether the catalog knows of nothing: no document, and no version left for clean-up."""
        return not self.db.execute("SELECT 1 FROM documents UNION ALL SELECT 1 FROM orphans LIMIT 1").fetchone()

    def sample_ids(self, n: int) -> list[str]:
        """Up to `n` committed chunk ids spread over the store (a cheap probe of what Chroma holds)."""
        low, high = self.db.execute("SELECT min(rowid), max(rowid) FROM chunks").fetchone()
        if low is None or n < 1:
            return []
        found: dict[str, None] = {}
        for k in range(n):
            row = self.db.execute(f"SELECT c.id FROM chunks c {_CURRENT} WHERE c.rowid >= ? ORDER BY c.rowid LIMIT 1",
                                  (low + (high - low) * k // n,)).fetchone()
            if row:
                found[row[0]] = None
        return list(found)

    def total_chunks(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(chunks), 0) FROM documents").fetchone()[0])

    def add_chunks(self, generation: str, source: str, chunks: Iterable[tuple]) -> None:
        """Insert pending chunk rows: (id, idx, page_start, page_end, content_hash, text, section)."""
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO chunks(id, generation, source, idx, page_start, page_end, content_hash, text,"
                " section) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c[0], generation, source, *c[1:]) for c in chunks],
            )

    def known_chunks(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            found.update(row[0] for row in self.db.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", part))
        return found

    # -- the storage steps of a version's life (docqa.archive.catalog.Catalog) -------------------------
    def _mark(self, generation: str, source: str, state: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO orphans(generation, source, kind) VALUES (?, ?, ?)",
                        (generation, source, state))

    def _unmark(self, generation: str) -> None:
        self.db.execute("DELETE FROM orphans WHERE generation = ?", (generation,))

    def _marks(self) -> list[Mark]:
        """Every mark; none has a live writer, as each writer holds the store's write lock (a pending version
        found by the next writer was left by one that died)."""
        return [Mark(generation, source, kind) for generation, source, kind in
                self.db.execute("SELECT generation, source, kind FROM orphans")]

    def _current(self, sources: Iterable[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for source in sources:
            row = self.document(source)
            if row:
                found[source] = row.generation
        return found

    def _write_document(self, source: str, generation: str, file_hash: str, pages: int, chunks: int) -> None:
        self.db.execute("DELETE FROM chunks WHERE source = ? AND generation != ?", (source, generation))
        self.db.execute(
            "INSERT OR REPLACE INTO documents(source, generation, file_hash, pages, chunks, ingested_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (source, generation, file_hash, pages, chunks, time.time()),
        )

    def _remove_document(self, source: str) -> None:
        self.db.execute("DELETE FROM chunks WHERE source = ?", (source,))
        self.db.execute("DELETE FROM documents WHERE source = ?", (source,))

    def _drop_rows(self, generation: str) -> None:
        self.db.execute("DELETE FROM chunks WHERE generation = ?", (generation,))

    def version(self) -> int:
        """Changes whenever any connection commits to the catalog (search caches key on it)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0]) + self._writes

    def others_version(self) -> int:
        """Changes whenever another connection (another process, another store object) commits."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def committed(self, ids: Sequence[str]) -> set[str]:
        """The committed ids among `ids`: those of a document's current generation.

        Chunk ids are `<generation>:<index>` and a generation's rows are in the catalog from before its
        vectors reach Chroma until after they leave it, so the id alone says whether a chunk is current.
        Dense search filters ~260 ids per query this way with no SQL (a lookup cost ~3 ms at 100k chunks).
        """
        version = self.version()
        if version != self._generations_version:
            self._generations = {row[0] for row in self.db.execute("SELECT generation FROM documents")}
            self._generations_version = version
        return {i for i in ids if i.rpartition(":")[0] in self._generations}

    def committed_rows(self) -> list[tuple[str, str, str, str, int, int, int, str]]:
        """(id, text, source, generation, chunk, page_start, page_end, section) of every committed chunk."""
        return list(self.db.execute(
            "SELECT c.id, c.text, c.source, c.generation, c.idx, c.page_start, c.page_end, c.section"
            f" FROM chunks c {_CURRENT} ORDER BY c.rowid"))

    def current_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute(f"SELECT c.id FROM chunks c {_CURRENT}")}

    # -- search ---------------------------------------------------------------------------------
    def records(self, ids: Sequence[str]) -> dict[str, ChunkRecord]:
        """The committed chunks among `ids` (others, e.g. of a pending ingest, are left out)."""
        found: dict[str, ChunkRecord] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM chunks c {_CURRENT} WHERE c.id IN ({marks})", part)
            found.update((row[0], ChunkRecord(*row)) for row in rows)
        return found

    @property
    def _lexical_db(self) -> sqlite3.Connection:
        """Lexical search's own connection: hybrid search runs it in a thread while the main connection
        serves the dense side (one SQLite connection runs one statement at a time)."""
        if self._reader is None:
            if self.read_only:
                self._reader = sqlite3.connect(self._uri, uri=True, timeout=60, isolation_level=None,
                                               check_same_thread=False)
            else:
                self._reader = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        return self._reader

    def lexical(self, query: str, limit: int) -> list[str]:
        """Ids of committed chunks matching any query term, best BM25 first (ties by id); thread-safe."""
        return [chunk_id for chunk_id, _ in self.lexical_scores(query, limit)]

    def lexical_scores(self, query: str, limit: int) -> list[tuple[str, float]]:
        """(id, BM25 score) of committed chunks matching any query term, best (highest score) first, ties
        by id; thread-safe. Hybrid search weighs each match by its score relative to the best one."""
        terms = query_terms(query)[:64]
        if not terms:
            return []
        with self._reader_lock:
            return self._lexical(terms, limit)

    def identifier_matches(self, query: str) -> list[tuple[str, int]]:
        """(chunk id, n) for each committed chunk holding a query term that mixes letters and digits (a code,
        a UUID, a part number) and is found in only n < _RARE_IDENTIFIER chunks; once per such term.
        Thread-safe."""
        terms = [term for term in query_terms(query)[:64] if _IDENTIFIER.match(term)]
        matches: list[tuple[str, int]] = []
        if not terms:
            return matches
        with self._reader_lock:
            for term in terms:
                rowids = [rowid for (rowid,) in self._lexical_db.execute(
                    "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?",
                    (match_any([term]), _RARE_IDENTIFIER))]
                if len(rowids) < _RARE_IDENTIFIER:
                    matches.extend((chunk_id, len(rowids)) for _, chunk_id in self._committed_rowids(rowids))
        return matches

    def _lexical(self, terms: list[str], limit: int) -> list[tuple[str, float]]:
        db = self._lexical_db
        match = match_any(self._selective(terms))
        # BM25 over the FTS index alone, then the committed filter on the few best rows: joining every
        # match to chunks/documents before sorting cost ~2x more at 100k chunks. Rows of a pending
        # ingest may fill the fetched head, so fetch deeper until the answer is provably complete.
        fetch = limit + 64
        while True:
            head = db.execute(
                "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
                " ORDER BY bm25(chunks_fts) LIMIT ?", (match, fetch)).fetchall()
            scores = dict(head)
            ranked = sorted((scores[rowid], chunk_id) for rowid, chunk_id in self._committed_rowids(list(scores)))
            ranked = ranked[:limit]
            # Complete when nothing is left unfetched, or when every unfetched row scores worse than the
            # last one kept (strictly: a tie could still win on id).
            if len(head) < fetch or (len(ranked) == limit and ranked[-1][0] < head[-1][1]):
                return [(chunk_id, -score) for score, chunk_id in ranked]  # bm25() is negative, lower is better
            fetch *= 4

    def _committed_rowids(self, rowids: list[int]) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for start in range(0, len(rowids), 500):
            part = rowids[start : start + 500]
            marks = ",".join("?" * len(part))
            out.extend(self._lexical_db.execute(
                f"SELECT c.rowid, c.id FROM chunks c {_CURRENT} WHERE c.rowid IN ({marks})", part))
        return out

    def _selective(self, terms: list[str]) -> list[str]:
        """`terms` less the very common ones, when rarer terms remain to match.

        FTS5 scores every chunk that matches any term of an OR query, so one "the" or "who" makes each
        search compute BM25 for most of the store (~300 ms at 100k chunks on 2 cores). A term in more
        than _COMMON_SHARE of the chunks (or _COMMON_CEILING) adds little to BM25 (idf below log 9; FTS5
        floors it at 1e-6 past half of them), so it is left out. A term in at most _COMMON_FLOOR chunks is always kept
        (scoring that many is cheap), so small stores search with every term. Counts are cached per
        catalog version.
        """
        db = self._lexical_db
        # This connection's data_version changes whenever any other connection, ours included, commits.
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._common_version:
            self._common = {}
            self._common_version = version
            total = int(db.execute("SELECT COALESCE(SUM(chunks), 0) FROM documents").fetchone()[0])
            # A term in over half the chunks has an idf FTS5 floors near zero: it ranks nothing, it only
            # makes every chunk "match", and those chunks' arbitrary order then drowns the exact matches in
            # the fused ranking. So half the store is the threshold even where scoring all would be cheap.
            threshold = min(max(int(total * _COMMON_SHARE), _COMMON_FLOOR), _COMMON_CEILING, total // 2)
            self._common_threshold = threshold if total >= 2 else 0  # 0: too small to bother
        threshold = self._common_threshold
        if not threshold or len(terms) < 2:
            return terms
        for term in terms:
            if term not in self._common:
                (count,) = db.execute(
                    "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?)",
                    (match_any([term]), threshold + 1)).fetchone()
                self._common[term] = count > threshold
        rare = [term for term in terms if not self._common[term]]
        return rare or terms  # all common: the slow but faithful query

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    def __init__(self, catalog: SqliteCatalog) -> None:
        self.catalog = catalog

    def __enter__(self) -> None:
        self.catalog.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.catalog.db.execute("ROLLBACK" if kind else "COMMIT")
        self.catalog._writes += 1
