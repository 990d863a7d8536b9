"""A real HTTP server on a free localhost port, in a thread, for the length of a `with` block."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LocalServer:
    """Subclasses give `handler()`, the request handler class; `stopping` is set when the block ends, so that a
    handler that plays a hanging server can stop waiting."""

    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise TypeError(f"{type(self).__name__} must define handler()")

    @property
    def root(self) -> str:
        assert self._httpd is not None, f"use {type(self).__name__} as a context manager"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self._httpd = self.server_class(("127.0.0.1", 0), self.handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
