"""Chroma clients: the embedded store in a directory, or a `chroma run` server."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from docqa.archive.records import StoreError


def local_client(store_dir: Path, previous: Any = None) -> Any:
    """A client on the local store that loads the vector index afresh; `previous`, an older client on it, is closed.

    chromadb keeps one engine per path in a process and hands it to every new client, so a new client alone
    would not see what other processes wrote since. Closing the previous client (chromadb's public close())
    stops that engine when no other client in this process holds the path, and frees its files and memory.
    If another client here still holds it, the engine is dropped from chromadb's per-path cache instead (a
    private attribute, checked by tests/test_chroma_clients.py): that client keeps working with its engine,
    and ArchivalStore._chroma reopens it before its next call.
    """
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient
    from chromadb.config import Settings as ChromaSettings

    path = str(store_dir / "chroma")
    if previous is not None:
        with contextlib.suppress(Exception):  # an engine that failed to load may fail to close too
            previous.close()
    SharedSystemClient._identifier_to_system.pop(path, None)
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=path, settings=ChromaSettings(anonymized_telemetry=False))
    except OSError as exc:
        raise StoreError(f"cannot open the store at {store_dir}: {exc.strerror or exc}; pass --store DIR") from None


class EngineReader:
    """Nearest-neighbour queries on a local store through Chroma's own engine, without chromadb's Python layer.

    chromadb's client is a Python layer over a Rust engine (the `chromadb_rust_bindings` package). Importing
    that layer costs about 0.9 s per process here (its API types, every built-in embedding function,
    OpenTelemetry), which a one-query `docqa search` or an agent's first search would pay for a query of a
    few milliseconds; the engine itself opens and answers in about 0.08 s. This reader opens the engine as
    chromadb's own RustBindingsAPI.start does and asks it what RustBindingsAPI._query asks. The bindings are
    not a public API: any failure here makes the store use chromadb's client for the rest of the process, and
    tests/test_chroma_clients.py checks that both answer a query alike, so a chromadb that changes them fails
    there loudly. Read-only; writes always go through the client.
    """

    def __init__(self, store_dir: Path, collection: str) -> None:
        import resource

        import chromadb_rust_bindings as engine

        path = str(store_dir / "chroma")
        config = engine.SqliteDBConfig(hash_type=engine.MigrationHash.MD5, migration_mode=engine.MigrationMode.Apply,
                                       url=f"{path}/chroma.sqlite3")
        # chromadb's default: a fifth of the file handles (each HNSW index holds five files open)
        handles = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 5
        self._engine: Any = engine.Bindings(allow_reset=False, sqlite_db_config=config, persist_path=path,
                                            hnsw_cache_size=handles)
        self._collection_id = str(self._engine.get_collection(collection, _TENANT, _DATABASE).id)

    def nearest(self, vectors: list[list[float]], n_results: int) -> tuple[list[str], list[float]]:
        """(ids, cosine distances) of the `n_results` nearest chunks to the first vector, nearest first."""
        found = self._engine.query(self._collection_id, None, vectors, n_results, None, None, ["distances"],
                                   _TENANT, _DATABASE)
        return list(found.ids[0]), [float(d) for d in found.distances[0]]

    def close(self) -> None:
        self._engine = None  # dropping the engine closes its files, as chromadb's own stop() does


_TENANT, _DATABASE = "default_tenant", "default_database"  # chromadb's defaults, which docqa's clients use


def connect_server(url: str, timeout: float = 10.0) -> Any:
    """A `chromadb.HttpClient` for a `chroma run` server at `url` (http[s]://host[:port]), checked alive."""
    import chromadb
    import httpx
    from chromadb.config import Settings as ChromaSettings

    parsed = urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path.strip("/") or parsed.query:
        raise StoreError(f"--chroma-url '{url}' is not a server address: use http://HOST:PORT (or https://)")
    try:
        port = parsed.port
    except ValueError:
        raise StoreError(f"--chroma-url '{url}' has an invalid port: use http://HOST:PORT") from None
    ssl = parsed.scheme == "https"
    port = port or (443 if ssl else 8000)
    host = parsed.hostname
    unreachable = f"cannot reach the Chroma server at {url}: is `chroma run` running?"
    # The Chroma client waits forever on a silent host; ask for the heartbeat ourselves, with a timeout.
    base = f"{parsed.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
    try:
        response = httpx.get(f"{base}/api/v2/heartbeat", timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreError(f"{unreachable} ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise StoreError(f"{unreachable} (the heartbeat answered HTTP {response.status_code}: "
                         "is it a Chroma >= 1.0 server?)")
    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl,
                                     settings=ChromaSettings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as exc:  # noqa: BLE001 - httpx, ValueError, chromadb errors: all mean "not usable"
        raise StoreError(f"{unreachable} ({type(exc).__name__}: {str(exc)[:160]})") from None
    return client
