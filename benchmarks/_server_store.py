"""Reading a store kept in a Chroma server from the outside, for server_crash_test.py (the local form is
`inspect_store` in _reliability.py, which reads the SQLite catalog).

A server store is two collections (docqa.archive.server_catalog): `<name>` holds the chunks (vector, text,
metadata with source and generation) and `<name>__catalog` one record per document (its current
generation), per orphan generation (pending or garbage) and per meta entry. Functions that open a Chroma
client run in a forked child (`in_child`), so the parent never holds one across a fork.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks._reliability import search_problems

_API = "/api/v2/tenants/default_tenant/databases/default_database/collections"


def vectors_in(url: str, collection: str, generations: list[str] | None = None) -> int:
    """How many chunks the server holds in `collection` (of these generations, if given); 0 if there is no
    such collection yet. Plain HTTP: safe in a parent that forks."""
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            found = http.get(f"{_API}/{collection}")
            if found.status_code != 200:
                return 0
            path = f"{_API}/{found.json()['id']}"
            if generations is None:
                return int(http.get(f"{path}/count").json())
            got = http.post(f"{path}/get", json={"where": {"generation": {"$in": generations}}, "include": []})
            return len(got.json()["ids"])
    except (httpx.HTTPError, ValueError, KeyError):
        return 0


def _client(url: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    from docqa.archive.chroma import bound_calls

    address = httpx.URL(url)
    client = chromadb.HttpClient(host=address.host, port=address.port, settings=Settings(anonymized_telemetry=False))
    bound_calls(client, 120)
    return client


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _read(client: Any, collection: str) -> tuple[dict[str, dict], dict[str, str], dict[str, tuple[dict, str]]]:
    """(source -> document record, generation -> orphan state, chunk id -> (metadata, text)) as stored."""
    names = {c.name for c in client.list_collections()}
    if collection not in names or f"{collection}__catalog" not in names:
        return {}, {}, {}
    records = client.get_collection(f"{collection}__catalog").get(include=["metadatas"])["metadatas"]
    documents = {m["source"]: m for m in records if m.get("kind") == "document"}
    orphans = {m["generation"]: m["state"] for m in records if m.get("kind") == "orphan"}
    got = client.get_collection(collection).get(include=["metadatas", "documents"])
    chunks = {i: (m, d) for i, m, d in zip(got["ids"], got["metadatas"], got["documents"], strict=True)}
    return documents, orphans, chunks


def snapshot(url: str, collection: str) -> dict[str, Any]:
    """What a clean ingest stored, to compare trials with: per source, its document record (without the
    time) and its chunks as [id, text hash] in chunk order."""
    documents, _, chunks = _read(_client(url), collection)
    per_source: dict[str, list[tuple[int, str, str]]] = {}
    for chunk_id, (meta, text) in chunks.items():
        if documents.get(meta["source"], {}).get("generation") == meta["generation"]:
            per_source.setdefault(meta["source"], []).append((int(meta["chunk"]), chunk_id, _text_hash(text)))
    return {"documents": {s: [d["generation"], d["file_hash"], int(d["pages"]), int(d["chunks"])]
                          for s, d in documents.items()},
            "chunks": {s: [[i, h] for _, i, h in sorted(rows)] for s, rows in per_source.items()}}


def copy_collection(url: str, source: str, target: str) -> bool:
    """Copy a store (both collections, vectors included) to another name on the same server."""
    client = _client(url)
    for suffix in ("", "__catalog"):
        origin = client.get_collection(source + suffix)
        copy = client.create_collection(target + suffix, embedding_function=None, metadata=origin.metadata)
        got = origin.get(include=["embeddings", "metadatas", "documents"])
        for start in range(0, len(got["ids"]), 1000):
            part = slice(start, start + 1000)
            copy.upsert(ids=got["ids"][part], embeddings=got["embeddings"][part], metadatas=got["metadatas"][part],
                        documents=got["documents"][part] if suffix == "" else None)
    return True


def inspect_server_store(url: str, collection: str, client_dir: str, words: dict[str, str],
                         references: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    """Check a server store no process is writing to; return what is wrong with it (runs in a child).

    `references` are snapshots of clean ingests: the current corpus first, then older texts the store may
    hold. After any crash (final=False): each committed document holds exactly the chunks a clean ingest
    makes of one of those texts (ids and texts), in Chroma and in its vector index; every chunk in Chroma
    belongs to a committed version or to one the catalog lists as pending or garbage (nothing untracked);
    search finds every committed file by its unique word. After the re-run (final=True): the store equals
    the clean ingest of the current corpus (documents and chunks), with no version left to clean up.
    """
    import numpy as np

    from docqa.archive.store import ArchivalStore
    from docqa.embeddings.load import load_embedder
    from docqa.settings import Settings

    problems: list[str] = []
    client = _client(url)
    documents, orphans, chunks = _read(client, collection)
    lost: set[str] = set()
    duplicated: set[str] = set()
    current: dict[str, list[tuple[int, str, str]]] = {}
    for chunk_id, (meta, text) in chunks.items():
        if documents.get(meta["source"], {}).get("generation") == meta["generation"]:
            current.setdefault(meta["source"], []).append((int(meta["chunk"]), chunk_id, _text_hash(text)))
    for source, record in documents.items():
        got = [[i, h] for _, i, h in sorted(current.get(source, []))]
        name = Path(source).name
        if len(got) != int(record["chunks"]):
            problems.append(f"{name}: catalog says {record['chunks']} chunks, Chroma has {len(got)}")
        versions = [ref["chunks"][source] for ref in references if source in ref["chunks"]]
        expected = next((v for v in versions if v[0][0].split(":")[0] == record["generation"]), None)
        if expected is None:
            problems.append(f"{name}: its current version matches no clean ingest")
            continue
        if final and expected is not versions[0]:
            problems.append(f"{name}: an old version is still current after the re-run")
        want, have = Counter(map(tuple, expected)), Counter(map(tuple, got))
        lost.update(f"{i}#{h}" for i, h in want - have)
        duplicated.update(f"{i}#{h}#{n}" for (i, h), n in (have - want).items())
        if want != have:
            problems.append(f"{name}: {sum((want - have).values())} chunks of a clean ingest missing, "
                            f"{sum((have - want).values())} extra")
    tracked = {d["generation"] for d in documents.values()} | set(orphans)
    untracked = [i for i, (meta, _) in chunks.items() if meta["generation"] not in tracked]
    if untracked:
        duplicated.update(untracked)
        problems.append(f"{len(untracked)} chunks in Chroma belong to no current or listed version")
    if final:
        reference = references[0]
        for source in words:
            if source not in documents:
                problems.append(f"{Path(source).name}: not in the store after the re-run")
                lost.update(f"{i}#{h}" for i, h in reference["chunks"].get(source, []))
        rows = {s: [d["generation"], d["file_hash"], int(d["pages"]), int(d["chunks"])] for s, d in documents.items()}
        if rows != reference["documents"]:
            problems.append("the documents listed differ from a clean ingest's")
        if orphans:
            problems.append(f"{len(orphans)} versions still listed for clean-up after a completed run")
        stale = len(chunks) - sum(len(rows) for rows in current.values())
        if stale:
            problems.append(f"{stale} chunks of old or aborted versions left in Chroma after a completed run")

    committed = {i for rows in current.values() for _, i, _ in rows}
    embedder = load_embedder()
    if chunks:  # reachable in the vector index itself, not only listed in Chroma's metadata
        main = client.get_collection(collection)
        reachable: set[str] = set()
        for seed in (0, 1):
            vector = np.random.default_rng(seed).standard_normal((1, embedder.dimension)).astype("float32")
            reachable.update(main.query(query_embeddings=vector, n_results=len(chunks), include=[])["ids"][0])
        if committed - reachable:
            lost.update(committed - reachable)
            problems.append(f"{len(committed - reachable)} committed chunks not in Chroma's vector index")

    store = ArchivalStore(Settings(store_dir=Path(client_dir), collection=collection, chroma_url=url),
                          embedder=embedder)
    found = search_problems(store, words, documents, problems)
    return {"problems": problems, "lost": len(lost), "duplicated": len(duplicated), "documents": len(documents),
            "chunks": len(committed), "found": found}
