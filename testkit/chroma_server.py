"""A real `chroma run` server on a free localhost port, for tests and benchmarks that kill, stop or restart it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHROMA = Path(sys.executable).parent / "chroma"  # the server CLI installed with chromadb


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChromaServer:
    """`chroma run --path DIR` on one port for its whole life: restarts keep the port and the data.

    The server is the `chroma` process itself (its Rust frontend runs inside it), so signals sent to
    `pid` reach the server: kill() is a crash, stop() a server that stops answering (SIGSTOP).
    """

    def __init__(self, directory: Path, port: int | None = None, startup_timeout: float = 120.0) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "server.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.stopped = False

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def start(self) -> ChromaServer:
        """Start the server and wait until its heartbeat answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(CHROMA), "run", "--path", str(self.directory / "db"), "--port",
                                             str(self.port), "--host", "127.0.0.1"], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.stopped = False
        deadline = time.monotonic() + self.startup_timeout
        while not self.alive(timeout=2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.close()
                raise RuntimeError(f"chroma run did not come up on port {self.port}:\n{tail}")
            time.sleep(0.1)
        return self

    def alive(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash); start() brings it back on the same data and port."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.stopped = False

    def stop(self) -> None:
        """SIGSTOP the server: its port still accepts connections, but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def restart(self) -> None:
        """Kill the server (stopped or not) and start it again on the same data and port."""
        self.kill()
        self.start()

    def close(self) -> None:
        """Shut the server down for good (SIGTERM, then SIGKILL if it does not go)."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.stopped:
            self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> ChromaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
