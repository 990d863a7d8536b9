"""The store in a real Chroma server (`chroma run` on localhost): ingest, search, re-ingest, delete and
crash recovery through `--chroma-url`, with nothing of the store kept on the client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docqa.ingest.files import source_of
from testkit.chroma_server import ChromaServer, free_port
from testkit.documents import real_text_paragraphs, write_multipage_pdf, write_text
from tests.helpers import (
    assert_invisible,
    half_written,
    ingest_json,
    invoke,
    long_pdf,
    open_store,
    run_docqa,
    search_json,
    stored_chunks,
    write_pending,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `chroma run` on a free port, stopped at the end of the module; yields its URL."""
    with ChromaServer(tmp_path_factory.mktemp("chroma-server")) as running:
        yield running.url


@pytest.fixture
def remote(server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point docqa at the server (as DOCQA_CHROMA_URL would), one collection per test."""
    monkeypatch.setenv("DOCQA_CHROMA_URL", server)
    name = "t-" + request.node.name.replace("_", "-")[:50].strip("-")
    monkeypatch.setenv("DOCQA_COLLECTION", name)
    return server


def corpus(root: Path) -> Path:
    paragraphs = real_text_paragraphs(8)
    write_text(root / "docs" / "incident.txt",
               "Incident report: the build failed with error code ERR-4711 on the staging cluster.\n"
               + paragraphs[0])
    write_text(root / "docs" / "notes.md", "# Notes\nThe lighthouse keeper feeds the cats at dawn.\n" + paragraphs[1])
    write_multipage_pdf(root / "docs" / "report.pdf", paragraphs[2:5])
    return root / "docs"


def names(payload: dict[str, Any]) -> list[str]:
    return [Path(hit["source"]).name for hit in payload["results"]]


def test_ingest_search_reingest_delete(tmp_path: Path, remote: str, embedder: Any) -> None:
    docs = corpus(tmp_path)
    code, report, stderr = ingest_json(docs)
    assert code == 0, stderr
    assert report["files_ingested"] == 3 and report["chunks_total"] == report["chunks_added"] >= 3
    assert len(stored_chunks()) == report["chunks_total"]  # the chunks are in the server's collection

    assert names(search_json("who feeds the cats in the morning?"))[0] == "notes.md"
    for query in ("ERR-4711", "err-4711"):  # an exact token, in any case
        lexical = search_json(query, "--mode", "lexical")
        assert names(lexical) == ["incident.txt"] and lexical["total"] == 1
    assert names(search_json("ERR-4711"))[0] == "incident.txt"
    assert search_json("ERR-47", "--mode", "lexical")["total"] == 0  # whole words, not substrings

    code, again, _ = ingest_json(docs)
    assert code == 0 and (again["files_unchanged"], again["chunks_added"]) == (3, 0)
    assert again["chunks_total"] == report["chunks_total"] == len(stored_chunks())

    write_text(docs / "incident.txt", "Incident closed: the fix for error code ERR-9001 was deployed.\n")
    code, changed, _ = ingest_json(docs)
    assert code == 0 and (changed["files_ingested"], changed["files_unchanged"]) == (1, 2)
    assert search_json("ERR-4711", "--mode", "lexical")["total"] == 0
    assert names(search_json("ERR-9001", "--mode", "lexical")) == ["incident.txt"]
    assert changed["chunks_total"] == len(stored_chunks())
    assert not [text for text, _ in stored_chunks() if "ERR-4711" in text]

    result = invoke("delete", docs / "notes.md")
    assert result.exit_code == 0 and "removed:" in result.stdout
    assert "notes.md" not in names(search_json("lighthouse keeper cats", "--page-size", 20))
    listing = invoke("list").stdout
    assert "notes.md" not in listing and "incident.txt" in listing and "report.pdf" in listing

    assert invoke("ingest", "--delete", docs, "-q").exit_code == 0
    assert search_json("incident", "--mode", "lexical")["total"] == 0
    assert stored_chunks() == [] and "0 document(s)" in invoke("list").stdout


def test_nothing_lives_on_the_client(tmp_path: Path, remote: str, embedder: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus(tmp_path)
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    monkeypatch.setenv("DOCQA_STORE", str(first))
    code, report, _ = ingest_json(docs)
    assert code == 0

    monkeypatch.setenv("DOCQA_STORE", str(second))  # another machine, same server
    assert names(search_json("ERR-4711"))[0] == "incident.txt"
    assert "3 document(s)" in invoke("list").stdout
    code, again, _ = ingest_json(docs)
    assert code == 0 and (again["files_unchanged"], again["chunks_added"]) == (3, 0)
    assert invoke("delete", docs / "notes.md").exit_code == 0

    monkeypatch.setenv("DOCQA_STORE", str(first))
    assert "notes.md" not in invoke("list").stdout
    assert search_json("lighthouse", "--mode", "lexical")["total"] == 0
    for client_dir in (first, second):  # at most the machine's write lock
        assert [p.name for p in client_dir.rglob("*") if not p.name.endswith(".lock")] == []


def test_an_interrupted_ingest_is_never_visible_and_is_cleaned(tmp_path: Path, remote: str, embedder: Any) -> None:
    kept = write_text(tmp_path / "kept.txt", "The original kept document talks about lighthouses.")
    other = write_text(tmp_path / "other.txt", "Another document about windmills.")
    assert ingest_json(kept)[0] == 0

    store = open_store()
    write_pending(store, embedder, source_of(tmp_path / "ghost.txt"), "A ghostly document about poltergeists.")
    write_pending(store, embedder, source_of(kept), "A replacement never committed, about volcanoes.")
    del store

    assert len(stored_chunks()) == 3
    assert_invisible("poltergeists")
    assert_invisible("volcanoes")
    code, report, _ = ingest_json(other)
    assert code == 0 and report["chunks_total"] == 2
    assert sorted(text for text, _ in stored_chunks()) == [
        "Another document about windmills.", "The original kept document talks about lighthouses."]


LIVE_WRITER = """
import sys, time
import numpy as np
from docqa.chunking import Chunk
from docqa.cli.config import resolve
from docqa.archive.store import ArchivalStore

store = ArchivalStore(resolve())
source = sys.argv[1]
generation = store.begin_document(source, "e" * 64)
vector = np.full((1, 384), 384 ** -0.5, dtype=np.float32)
store.add_chunks(generation, source, [Chunk(0, "A live writer is adding zeppelins.", 1, 1, 8)], vector)
print("ready", flush=True)
time.sleep(300)
"""


def test_a_live_writer_on_another_client_is_left_alone(tmp_path: Path, remote: str, embedder: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client's ingest in progress (its own write lock) is not mistaken for a crashed one."""
    monkeypatch.setenv("DOCQA_STORE", str(tmp_path / "client-b"))
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(tmp_path / "live.txt")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready", writer.stderr.read()
        monkeypatch.setenv("DOCQA_STORE", str(tmp_path / "client-a"))
        code, _, _ = ingest_json(write_text(tmp_path / "mine.txt", "My own document about gliders."))
        assert code == 0
        assert [text for text, _ in stored_chunks() if "zeppelins" in text]  # still there, still pending
        assert_invisible("zeppelins")
    finally:
        writer.kill()
        writer.wait()
    code, report, _ = ingest_json(write_text(tmp_path / "later.txt", "A later document about kites."))
    assert code == 0 and report["chunks_total"] == 2 == len(stored_chunks())  # the dead writer's chunk is gone


def test_an_interrupted_ingest_is_resumed_from_the_server(tmp_path: Path, remote: str, embedder: Any) -> None:
    pdf = long_pdf(tmp_path / "long.pdf", pages=8)
    _, total = half_written(pdf, embedder, 10)  # its writer (this process, done writing) is gone
    code, report, stderr = ingest_json(pdf)
    assert code == 0, stderr
    assert (report["chunks_reused"], report["chunks_added"]) == (10, total)
    assert [meta["chunk"] for _, meta in stored_chunks()] == list(range(total))
    assert "zqxresumed" in search_json("zqxresumed")["results"][0]["text"]


LIVE_PDF_WRITER = """
import sys, time
from pathlib import Path
from docqa.archive.store import ArchivalStore
from docqa.chunking import chunk_pages
from docqa.cli.config import resolve
from docqa.ingest.files import file_hash, source_of
from docqa.readers import read_pages

store = ArchivalStore(resolve())
pdf = Path(sys.argv[1])
generation = store.begin_document(source_of(pdf), file_hash(pdf))
chunks = list(chunk_pages(read_pages(pdf, []), store.embedder.tokenizer, 200, 40))[:10]
store.add_chunks(generation, source_of(pdf), chunks, store.embedder.embed([c.text for c in chunks]))
print("ready", flush=True)
time.sleep(300)
"""


def test_a_live_writers_version_of_the_same_file_is_not_adopted(tmp_path: Path, remote: str, embedder: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client still ingesting the same file: its chunks are not taken as an interrupted run's."""
    pdf = long_pdf(tmp_path / "long.pdf", pages=8)
    monkeypatch.setenv("DOCQA_STORE", str(tmp_path / "client-b"))
    writer = subprocess.Popen([sys.executable, "-c", LIVE_PDF_WRITER, str(pdf)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready", writer.stderr.read()
        monkeypatch.setenv("DOCQA_STORE", str(tmp_path / "client-a"))
        code, report, stderr = ingest_json(pdf)
        assert code == 0, stderr
        assert report["chunks_reused"] == 0 and "resumed" not in stderr
    finally:
        writer.kill()
        writer.wait()
    assert [meta["chunk"] for _, meta in stored_chunks()] == list(range(report["chunks_added"]))


def test_search_as_a_subprocess(tmp_path: Path, remote: str, embedder: Any) -> None:
    assert ingest_json(corpus(tmp_path))[0] == 0
    done = run_docqa("search", "ERR-4711", "--mode", "lexical")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Showing 1 of 1 results (page 0/0):") and "incident.txt, page 1" in done.stdout


def test_sections_are_kept_on_the_server(tmp_path: Path, remote: str, embedder: Any) -> None:
    from docqa.archive.server_catalog import _record
    from tests.formats import write_html_manual

    paragraphs = real_text_paragraphs(4)
    write_html_manual(tmp_path / "docs" / "guide.html", [
        ("h1", "Guide"), ("p", paragraphs[0]), ("h2", "Backups"), ("p", paragraphs[1]),
        ("p", "Snapshots of the walrus database are taken every Tuesday."), ("p", paragraphs[2])])
    assert ingest_json(tmp_path / "docs", "--chunk-tokens", 100, "--overlap", 20)[0] == 0
    hit = search_json("walrus", "--mode", "lexical")["results"][0]
    assert Path(hit["source"]).name == "guide.html" and hit["section"] == "Guide > Backups", hit
    assert {meta["section"] for _, meta in stored_chunks()} >= {"Guide", "Guide > Backups"}
    shown = invoke("search", "walrus", "--mode", "lexical").stdout
    assert 'guide.html, section "Guide > Backups" (paragraph' in shown, shown
    # A chunk stored before sections were kept has no "section" in its metadata.
    old = _record("g:0", "text", {"source": "a.html", "page_start": 2, "page_end": 3, "chunk": 0})
    assert old.section == ""


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_docqa("search", "anything", "--chroma-url", url)
    assert done.returncode == 1
    assert f"cannot reach the Chroma server at {url}" in done.stderr and "chroma run" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr

    doc = write_text(tmp_path / "a.txt", "some text")
    result = invoke("ingest", doc, "--chroma-url", url, "-q")
    assert result.exit_code == 1 and "cannot reach the Chroma server" in result.stderr

    result = invoke("list", "--chroma-url", "ftp://example.org/chroma")
    assert result.exit_code == 1 and "http://HOST:PORT" in result.stderr
