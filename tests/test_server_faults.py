"""A Chroma server that dies (SIGKILL) or stops answering (SIGSTOP) under docqa: one line and exit 1 within the time
limit, never a hang or a traceback; once the server is back, a re-run leaves the store equal to a clean ingest.

Each test runs its own `chroma run` (testkit.chroma_server) and sends it real signals; DOCQA_CHROMA_TIMEOUT is
cut to a few seconds so that a stopped server is given up on quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.chroma_server import ChromaServer
from testkit.documents import real_text_paragraphs, write_text
from tests.helpers import DOCQA, invoke, open_store, stored_chunks

TIMEOUT = 3  # seconds without a reply before docqa gives up on the server, in these tests
HANG = 180  # a command still running after this long is hung: the test fails instead of waiting forever


@pytest.fixture
def chroma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChromaServer]:
    """A `chroma run` of this test's own (signals must not hit other tests), and docqa pointed at it."""
    with ChromaServer(tmp_path / "server") as server:
        monkeypatch.setenv("DOCQA_CHROMA_URL", server.url)
        monkeypatch.setenv("DOCQA_CHROMA_TIMEOUT", str(TIMEOUT))
        yield server


def corpus(root: Path) -> Path:
    """Four text files, about 150 chunks: at 16 chunks a write, an ingest makes a dozen server writes."""
    paragraphs = real_text_paragraphs(300)
    for n in range(4):
        write_text(root / "docs" / f"part{n}.txt", "\n\n".join(paragraphs[n * 75 : (n + 1) * 75]))
    return root / "docs"


def ingest_args(docs: Path, collection: str) -> list[str]:
    return ["ingest", str(docs), "--collection", collection, "--batch-size", "4", "-q"]


def server_count(server: ChromaServer, collection: str) -> int:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.HttpClient(host="127.0.0.1", port=server.port, settings=Settings(anonymized_telemetry=False))
    try:
        return client.get_collection(collection).count()
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def one_line_error(stderr: str) -> str:
    """The one error line docqa printed; fails on a traceback, an "unexpected error" or several lines."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("docqa: error: "), stderr[-3000:]
    assert "unexpected" not in lines[0] and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def store_state(collection: str) -> tuple[list[Any], list[Any]]:
    """What a user could tell apart: the documents listed and every chunk (text and metadata) in Chroma."""
    return open_store(collection=collection).documents(), stored_chunks(collection=collection)


@pytest.mark.parametrize("fault", ["stop, then resume", "stop, then restart", "kill, then restart"])
def test_a_server_lost_mid_ingest_ends_it_in_one_line_and_a_rerun_completes_it(
        tmp_path: Path, chroma: ChromaServer, embedder: Any, fault: str) -> None:
    docs = corpus(tmp_path)
    assert invoke(*ingest_args(docs, "reference")).exit_code == 0  # a clean ingest, to compare with
    clean = store_state("reference")

    with open(tmp_path / "ingest.err", "wb") as err:
        ingest = subprocess.Popen([str(DOCQA), *ingest_args(docs, "faulted")], stdout=subprocess.DEVNULL,
                                  stderr=err, env=os.environ.copy())
    try:
        while ingest.poll() is None and server_count(chroma, "faulted") < 16:  # its first batch went in
            time.sleep(0.05)
        assert ingest.poll() is None, "the ingest ended before the fault: " + (tmp_path / "ingest.err").read_text()
        if fault.startswith("stop"):
            chroma.stop()
        else:
            chroma.kill()
        try:
            code = ingest.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"docqa ingest hung for {HANG} s after the server's {fault.split(',')[0]}")
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
    line = one_line_error((tmp_path / "ingest.err").read_text())
    assert code == 1 and chroma.url in line
    if fault.startswith("stop"):
        assert f"stopped answering (no reply within {TIMEOUT} s)" in line
    else:
        assert "is `chroma run` still running?" in line or "is `chroma run` running?" in line

    if fault.endswith("resume"):
        chroma.resume()
    else:
        chroma.restart()
    rerun = invoke(*ingest_args(docs, "faulted"))
    assert rerun.exit_code == 0, rerun.stderr
    assert store_state("faulted") == clean  # nothing lost, nothing twice, nothing left of the cut run


HOLDER = """
import json, sys, time
from pathlib import Path
from docqa.archive.store import ArchivalStore
from docqa.cli.config import resolve
from docqa.ingest.pipeline import delete_paths, ingest_text

store = ArchivalStore(resolve())
store.search("warm up", mode="hybrid")  # loads the query embedder before the fault
print("ready", flush=True)
sys.stdin.readline()  # the test kills or stops the server now
operations = {
    "list": lambda: store.documents(),
    "search dense": lambda: store.search("lighthouse keeper", mode="dense"),
    "search lexical": lambda: store.search("lighthouse", mode="lexical"),
    "search hybrid": lambda: store.search("lighthouse keeper cats", mode="hybrid"),
    "insert": lambda: ingest_text(store, "note:1", "A new note about windmills."),
    "delete": lambda: delete_paths(store, [Path(sys.argv[1])]),
}
for name, operation in operations.items():
    started = time.monotonic()
    try:
        operation()
        print(json.dumps({"op": name, "error": None}), flush=True)
    except Exception as exc:
        print(json.dumps({"op": name, "error": type(exc).__name__, "message": str(exc),
                          "seconds": time.monotonic() - started}), flush=True)
"""


@pytest.mark.parametrize("fault", ["stop", "kill"])
def test_every_operation_on_a_lost_server_raises_the_one_line_store_error(
        tmp_path: Path, chroma: ChromaServer, embedder: Any, fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived process (chat, the library) whose server goes away after it opened the store."""
    monkeypatch.setenv("DOCQA_COLLECTION", "held")
    doc = write_text(tmp_path / "kept.txt", "The lighthouse keeper feeds the cats at dawn.")
    assert invoke("ingest", doc, "-q").exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(doc)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read() if holder.stderr else ""
        if fault == "stop":
            chroma.stop()
        else:
            chroma.kill()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        try:
            out, err = holder.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"an operation hung for {HANG} s after the server's {fault}")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["op"] for r in results] == ["list", "search dense", "search lexical", "search hybrid", "insert",
                                          "delete"], err[-3000:]
    for result in results:
        assert result["error"] == "StoreError", result
        assert chroma.url in result["message"], result
        if fault == "stop":
            assert f"stopped answering (no reply within {TIMEOUT} s)" in result["message"], result
        else:
            assert "`chroma run`" in result["message"], result


def test_a_stopped_server_at_open_is_a_one_line_error(tmp_path: Path, chroma: ChromaServer) -> None:
    chroma.stop()
    for args in (["list"], ["search", "anything"], ["ingest", str(write_text(tmp_path / "a.txt", "text"))],
                 ["delete", str(tmp_path / "a.txt")]):
        try:
            done = subprocess.run([str(DOCQA), *args], capture_output=True, text=True, timeout=HANG,
                                  env=os.environ.copy(), check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"docqa {args[0]} hung for {HANG} s on a stopped server")
        assert done.returncode == 1
        assert f"stopped answering (no reply within {TIMEOUT} s)" in one_line_error(done.stderr), args


def test_every_call_to_the_server_has_a_time_limit(chroma: ChromaServer) -> None:
    """docqa.archive.chroma.bound_calls reaches into chromadb's HTTP client (chromadb offers no setting for a
    timeout); if chromadb changes that client, this fails and bound_calls must be updated."""
    import chromadb
    from chromadb.config import Settings

    from docqa.archive.chroma import bound_calls

    client = chromadb.HttpClient(host="127.0.0.1", port=chroma.port, settings=Settings(anonymized_telemetry=False))
    assert bound_calls(client, 2.5), f"chromadb {chromadb.__version__} changed its HTTP client: update bound_calls"
    chroma.stop()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.heartbeat()
        except BaseException as exc:  # noqa: BLE001 - the outcome is checked below
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(HANG)
    assert not worker.is_alive(), "a call to a stopped server had no time limit"
    assert outcome and isinstance(outcome[0], httpx.TimeoutException), outcome
