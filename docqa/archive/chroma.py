"""Chroma clients: the embedded store in a directory, or a `chroma run` server."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from docqa.archive.records import StoreError
from docqa.settings import Settings


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


def connect_server(url: str, timeout: float = Settings.chroma_timeout) -> Any:
    """A client of the `chroma run` server at `url` (http[s]://host[:port]), checked alive.

    Every call through it, this one included, gives up after `timeout` seconds without a reply, and a lost
    server (refused, reset, killed, stopped) is a StoreError saying so, never an httpx error or a hang.
    """
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
    link = ServerLink(url, timeout)
    # chromadb's client waits forever on a silent host, its constructor included: ask for the heartbeat
    # ourselves first, with a time limit, then make the client in a thread we stop waiting for.
    base = f"{parsed.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
    try:
        response = httpx.get(f"{base}/api/v2/heartbeat", timeout=timeout)
    except httpx.TransportError as exc:
        raise link.lost(exc) from None
    except httpx.HTTPError as exc:
        raise StoreError(f"{link.unreachable} ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise StoreError(f"{link.unreachable} (the heartbeat answered HTTP {response.status_code}: "
                         "is it a Chroma >= 1.0 server?)")

    def make() -> Any:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=ChromaSettings(anonymized_telemetry=False))
        if not bound_calls(client, timeout):
            print(f"docqa: warning: chromadb {chromadb.__version__} changed its HTTP client: calls to the Chroma "
                  "server have no time limit, and a server that stops answering will hang docqa", file=sys.stderr)
        client.heartbeat()
        return client

    try:
        client = _within(timeout, make)
    except httpx.TransportError as exc:
        raise link.lost(exc) from None
    except TimeoutError:
        raise link.silent() from None
    except Exception as exc:  # noqa: BLE001 - ValueError, chromadb errors: all mean "not usable"
        raise StoreError(f"{link.unreachable} ({type(exc).__name__}: {str(exc)[:160]})") from None
    return Guarded(client, link)


def bound_calls(client: Any, timeout: float) -> bool:
    """Make every HTTP request of a chromadb HttpClient give up after `timeout` seconds without progress.

    chromadb (1.5) builds its httpx client with no timeout and has no setting or argument for one, so this
    sets the private `client._server._session`'s; tests/test_server_faults.py fails if chromadb changes it.
    All clients made from the same client (its collections, its admin client) share that session. Returns
    False if the session is not where it was.
    """
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if not isinstance(session, httpx.Client):
        return False
    session.timeout = httpx.Timeout(timeout)
    return True


def _within(seconds: float, make: Callable[[], Any]) -> Any:
    """make()'s result, or TimeoutError if it has not returned after `seconds` (it is then left running, in a
    daemon thread that cannot keep the process alive: chromadb's calls cannot be cancelled from outside)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = make()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="docqa-chroma-connect", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class ServerLink:
    """What docqa says when a Chroma server is lost, and the memory of a server that stopped answering."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.unreachable = f"cannot reach the Chroma server at {url}: is `chroma run` running?"
        self._silent_until = 0.0

    def silent(self) -> StoreError:
        """A server that did not answer within the time limit: for the next `timeout` seconds, calls fail at
        once instead of waiting again (an interrupted ingest's clean-up would otherwise double the wait)."""
        self._silent_until = time.monotonic() + self.timeout
        return StoreError(f"the Chroma server at {self.url} stopped answering (no reply within {self.timeout:g} s): "
                          "is it paused or overloaded? If it is only slow, raise DOCQA_CHROMA_TIMEOUT (seconds)")

    def lost(self, exc: Exception) -> StoreError:
        """The StoreError for an httpx transport error."""
        import httpx

        kind = type(exc).__name__
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol, httpx.ProxyError)):
            return StoreError(f"{self.unreachable} ({kind})")
        if isinstance(exc, httpx.TimeoutException):
            return self.silent()
        return StoreError(f"lost the connection to the Chroma server at {self.url} ({kind}): "
                          "is `chroma run` still running?")

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import httpx

        if time.monotonic() < self._silent_until:
            raise self.silent()
        try:
            return function(*args, **kwargs)
        except httpx.TransportError as exc:
            raise self.lost(exc) from None


class Guarded:
    """A chromadb client or collection of a server whose calls raise a StoreError when the server is lost.

    chromadb lets httpx's errors through (none is a ChromaError), from every method; wrapping the objects
    docqa calls, rather than each call site, keeps one boundary. Collections it hands out are wrapped too.
    """

    def __init__(self, target: Any, link: ServerLink) -> None:
        self._target = target
        self._link = link

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._link.call(value, *args, **kwargs)
            return Guarded(result, self._link) if _is_collection(result) else result

        return call

    def __repr__(self) -> str:
        return f"Guarded({self._target!r})"


def _is_collection(value: Any) -> bool:
    from chromadb.api.models.Collection import Collection

    return isinstance(value, Collection)
