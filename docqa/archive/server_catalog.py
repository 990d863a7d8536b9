"""The store's catalog when the store is a Chroma server (`--chroma-url`): kept in Chroma, not on the client.

Several machines may share one server, so nothing of the store lives only on a client. Beside the main
collection (vectors, chunk texts, chunk metadata) a second collection `<name>__catalog` holds one small
record per document (`doc:<hash of source>`: source, current generation, file hash, pages, chunks), per
orphan generation (`orphan:<generation>`: pending or garbage, see docqa.archive.catalog) and per meta entry
(`meta:<key>`). Its records carry a dummy one-dimensional embedding; they are only ever read by id or
by a metadata filter. A chunk is visible to search only if its `generation` metadata is the current
generation of its document's record, so a pending or replaced version never shows.

What this gives up compared with the local store (SQLite catalog + FTS5):
- No BM25. The lexical ranking asks Chroma's full-text index (`where_document` `$regex`) for chunks
  holding each query term as a whole word, case-insensitively, then ranks the candidates by the summed
  rarity (log inverse document frequency) of the distinct terms they contain. There is no term frequency
  or length normalisation, and each term's candidates are capped at the search depth (an arbitrary subset
  for very common words), so ranking among chunks matching common words is coarser than BM25. No
  stemming either (FTS5 does not stem by default, so this matches local mode).
- No multi-record transactions. A commit is three single-record writes ordered so that a crash between
  any two leaves the old version current and the new one an orphan that the next writer removes.
- The write lock is a file on the client (`--store` dir): one writer per machine. Writers on different
  machines are not serialised. Their pending versions are protected by a lease (refreshed as batches go
  in; a crashed writer's version is cleaned once its process is gone, on its own machine, or once its
  lease expires, on any other), but two machines replacing the same document at the same moment can
  leave the loser's chunks behind: invisible to search, they only take space.
- `version()` changes on every write from any machine (a revision record), at the cost of one request
  per search; a ranking already computed by a long-lived process (the agent paging through results) may
  name chunks another machine has since replaced: those are dropped from the page rather than shown.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docqa.archive.catalog import PENDING, Catalog, Mark
from docqa.archive.records import ChunkRecord, DocumentRow, StoreError
from docqa.archive.terms import query_terms

LEASE_SECONDS = 600.0  # a pending version from another machine untouched this long belongs to a dead writer
_LEASE_REFRESH = 60.0
_BATCH = 500  # ids per request
_MAX_TERMS = 32
_DUMMY = [1.0]  # the catalog collection's records are looked up by id and metadata, never by vector


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _doc_id(source: str) -> str:
    return "doc:" + _digest(source)[:32]


class ServerCatalog(Catalog):
    """The catalog (docqa.archive.catalog.Catalog), served from the Chroma server itself."""

    def __init__(self, client: Any, collection_name: str) -> None:
        self.client = client
        self.collection_name = collection_name
        try:
            self.table = client.get_or_create_collection(f"{collection_name}__catalog", embedding_function=None)
        except StoreError:
            raise  # the server is lost: docqa.archive.chroma says so
        except Exception as exc:  # noqa: BLE001 - chromadb raises several kinds for a bad name or server
            raise StoreError(f"cannot open collection '{collection_name}' on the Chroma server: "
                             f"{str(exc)[:200]}") from None
        self._chunks: Any = None
        self._writes = 0
        self._host = socket.gethostname()
        self._lease_renewed: dict[str, float] = {}

    @property
    def chunks(self) -> Any:
        """The main collection (created by ArchivalStore with these same arguments)."""
        if self._chunks is None:
            self._chunks = self.client.get_or_create_collection(
                self.collection_name, embedding_function=None, metadata={"hnsw:space": "cosine"})
        return self._chunks

    # -- records --------------------------------------------------------------------------------
    def _get(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _BATCH):
            result = self.table.get(ids=list(ids[start : start + _BATCH]), include=["metadatas"])
            found.update(zip(result["ids"], result["metadatas"], strict=True))
        return found

    def _put(self, record_id: str, metadata: dict[str, Any]) -> None:
        self._writes += 1
        self.table.upsert(ids=[record_id], embeddings=[_DUMMY], metadatas=[metadata])

    def _drop(self, record_id: str) -> None:
        self._writes += 1
        self.table.delete(ids=[record_id])

    def _bump(self) -> None:
        """Tell every client's search cache that the committed state changed."""
        self._put("meta:revision", {"kind": "meta", "key": "revision", "value": uuid.uuid4().hex})

    # -- metadata -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        record = self._get([f"meta:{key}"]).get(f"meta:{key}")
        return str(record["value"]) if record else None

    def set_meta(self, key: str, value: str) -> None:
        self._put(f"meta:{key}", {"kind": "meta", "key": key, "value": value})

    # -- documents ------------------------------------------------------------------------------
    @staticmethod
    def _row(meta: dict[str, Any]) -> DocumentRow:
        return DocumentRow(meta["source"], meta["generation"], meta["file_hash"], int(meta["pages"]),
                           int(meta["chunks"]))

    def document(self, source: str) -> DocumentRow | None:
        meta = self._get([_doc_id(source)]).get(_doc_id(source))
        return self._row(meta) if meta else None

    def documents(self) -> list[DocumentRow]:
        result = self.table.get(where={"kind": "document"}, include=["metadatas"])
        return sorted((self._row(meta) for meta in result["metadatas"]), key=lambda row: row.source)

    def total_chunks(self) -> int:
        return sum(row.chunks for row in self.documents())

    def _current(self, sources: Iterable[str]) -> dict[str, str]:
        """source -> its current generation, for those of `sources` that are in the store."""
        records = self._get([_doc_id(source) for source in set(sources)])
        return {meta["source"]: meta["generation"] for meta in records.values()}

    def _pending(self, source: str, generation: str) -> dict[str, Any]:
        return {"kind": "orphan", "state": "pending", "generation": generation, "source": source,
                "host": self._host, "pid": os.getpid(), "lease": time.time()}

    def add_chunks(self, generation: str, source: str, chunks: Iterable[tuple]) -> None:
        """The chunks themselves live in the main collection; only renew this writer's lease."""
        renewed = self._lease_renewed.get(generation, 0.0)
        if time.monotonic() - renewed > _LEASE_REFRESH:
            self._put(f"orphan:{generation}", self._pending(source, generation))
            self._lease_renewed[generation] = time.monotonic()

    # -- the storage steps of a version's life (docqa.archive.catalog.Catalog: ordered, no transactions) -----
    def _mark(self, generation: str, source: str, state: str) -> None:
        if state == PENDING:
            self._put(f"orphan:{generation}", self._pending(source, generation))
            self._lease_renewed[generation] = time.monotonic()
        else:
            self._put(f"orphan:{generation}", {"kind": "orphan", "state": state, "generation": generation,
                                               "source": source})

    def _unmark(self, generation: str) -> None:
        self._drop(f"orphan:{generation}")
        self._lease_renewed.pop(generation, None)

    def _marks(self) -> list[Mark]:
        result = self.table.get(where={"kind": "orphan"}, include=["metadatas"])
        return [Mark(meta["generation"], meta["source"], meta["state"],
                     meta["state"] == PENDING and self._writer_alive(meta)) for meta in result["metadatas"]]

    def _write_document(self, source: str, generation: str, file_hash: str, pages: int, chunks: int) -> None:
        self._put(_doc_id(source), {"kind": "document", "source": source, "generation": generation,
                                    "file_hash": file_hash, "pages": pages, "chunks": chunks,
                                    "ingested_at": time.time()})

    def _remove_document(self, source: str) -> None:
        self._drop(_doc_id(source))

    def _changed(self) -> None:
        self._bump()

    def _writer_alive(self, meta: dict[str, Any]) -> bool:
        fresh = time.time() - float(meta.get("lease", 0.0)) < LEASE_SECONDS
        if meta.get("host") == self._host:
            # Our caller holds this machine's write lock: a pending version of this process is an
            # abandoned one, and another process's is live only while that process runs.
            pid = int(meta.get("pid", 0))
            return fresh and pid != os.getpid() and _process_alive(pid)
        return fresh

    def version(self) -> int:
        """Changes whenever any client commits or deletes (search caches key on it)."""
        revision = self.get_meta("revision") or ""
        return hash((revision, self._writes))

    # -- search ---------------------------------------------------------------------------------
    def committed(self, ids: Sequence[str]) -> set[str]:
        return set(self._visible(ids, include=["metadatas"]))

    def records(self, ids: Sequence[str]) -> dict[str, ChunkRecord]:
        """The committed chunks among `ids` (others, e.g. of a pending ingest, are left out)."""
        return {i: _record(i, text, meta) for i, (text, meta) in self._visible(ids).items()}

    def _visible(self, ids: Sequence[str], include: list[str] | None = None) -> dict[str, tuple[str, dict]]:
        rows: dict[str, tuple[str, dict]] = {}
        include = include or ["documents", "metadatas"]
        for start in range(0, len(ids), _BATCH):
            result = self.chunks.get(ids=list(ids[start : start + _BATCH]), include=include)
            texts = result.get("documents") or [""] * len(result["ids"])
            rows.update(zip(result["ids"], zip(texts, result["metadatas"], strict=True), strict=True))
        return self._keep_current(rows)

    def _keep_current(self, rows: dict[str, tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
        current = self._current(meta["source"] for _, meta in rows.values())
        return {i: row for i, row in rows.items() if current.get(row[1]["source"]) == row[1]["generation"]}

    def lexical(self, query: str, limit: int) -> list[str]:
        """Ids of committed chunks holding any query term as a word (any case), rarest terms first."""
        terms = query_terms(query)[:_MAX_TERMS]
        if not terms or limit < 1:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(terms))) as pool:
            results = list(pool.map(lambda term: self._matching(term, limit), terms))
        rows: dict[str, tuple[str, dict]] = {}
        matched: dict[str, set[int]] = {}
        for t, result in enumerate(results):
            for chunk_id, text, meta in zip(result["ids"], result["documents"], result["metadatas"], strict=True):
                rows[chunk_id] = (text or "", meta)
                matched.setdefault(chunk_id, set()).add(t)
        rows = self._keep_current(rows)
        if not rows:
            return []
        # A chunk may hold a term whose candidate list was cut at `limit`: check every term in its text.
        patterns = [re.compile(_word_pattern(term)) for term in terms]
        total = max(self.chunks.count(), 1)
        weights = [math.log(1 + total / max(len(result["ids"]), 1)) for result in results]
        scores: dict[str, tuple[float, int]] = {}
        for chunk_id, (text, _) in rows.items():
            hits = matched[chunk_id] | {t for t, p in enumerate(patterns) if t not in matched[chunk_id]
                                        and p.search(text)}
            occurrences = sum(len(patterns[t].findall(text)) for t in hits)
            scores[chunk_id] = (sum(weights[t] for t in hits), occurrences)
        ordered = sorted(scores, key=lambda i: (-scores[i][0], -scores[i][1], i))
        return ordered[:limit]

    def _matching(self, term: str, limit: int) -> dict[str, Any]:
        return self.chunks.get(where_document={"$regex": _word_pattern(term)}, limit=limit,
                               include=["documents", "metadatas"])


def _word_pattern(term: str) -> str:
    """The term as a whole word in any case; the same text in Chroma's (Rust) and Python's regex syntax."""
    return r"(?i)\b" + re.escape(term) + r"\b"


def _record(chunk_id: str, text: str, meta: dict[str, Any]) -> ChunkRecord:
    return ChunkRecord(chunk_id, text, meta["source"], int(meta["page_start"]), int(meta["page_end"]),
                       int(meta["chunk"]), _digest(text), str(meta.get("section") or ""))


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
