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
