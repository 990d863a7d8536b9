"""A store at the limits of its filesystem: a disk that fills during an ingest, and a store that may only be read.

Both are real: a small tmpfs mounted for the test (the disk), and a read-only bind mount of a real store (what a
read-only share or mount gives: even root cannot write through it). Where this process may not mount (not root,
or no CAP_SYS_ADMIN), the tests are skipped and say why.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docqa.archive.store import ArchivalStore
from docqa.cli.config import resolve
from testkit.documents import real_text_paragraphs, write_text
from testkit.fake_llm import FakeLLMServer, last_tool_results, text_response, tool_call_response, wants_function_call
from tests.helpers import run_docqa


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount here (mount {' '.join(args)}: {done.stderr.strip()}): needs root with CAP_SYS_ADMIN")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def write_corpus(directory: Path, files: int, paragraphs: int, first: int = 0) -> list[Path]:
    texts = real_text_paragraphs(first + files * paragraphs)[first:]
    return [write_text(directory / f"f{n:02d}.txt", "\n\n".join(texts[n * paragraphs : (n + 1) * paragraphs])
                       + f"\nThe code word is zqx{n:02d}word.") for n in range(files)]


def finds(store: Path, word: str, mode: str) -> bool:
    done = run_docqa("search", word, "--store", store, "--mode", mode, "--json", "--page-size", 20)
    assert done.returncode == 0, done.stderr
    return any(word in hit["text"] for hit in json.loads(done.stdout)["results"])


def one_error_line(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docqa: error:"), stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "unexpected" not in lines[0]


# -- disk full ----------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    yield disk
    unmount(disk)


def test_a_disk_that_fills_mid_ingest_stops_it_in_one_line_with_a_report_and_keeps_earlier_documents_searchable(
        small_disk: Path, tmp_path: Path) -> None:
    store = small_disk / "store"
    first = write_corpus(tmp_path / "first", 2, 12)
    assert run_docqa("ingest", *first, "--store", store, "-q").returncode == 0
    many = write_corpus(tmp_path / "many", 30, 10, first=24)  # about 250 chunks: more than 4 MB holds

    done = run_docqa("ingest", tmp_path / "many", "--store", store, "--json")
    assert done.returncode == 1, done.stderr
    one_error_line(done.stderr, "full", "free some space")
    report = json.loads(done.stdout)
    assert "full" in report["error"]
    stored = report["files_ingested"]
    assert 0 < stored < len(many), "the disk must fill part way through the corpus"
    assert len(report["files_failed"]) == len(many) - stored
    assert all("full" in failure["error"] for failure in report["files_failed"])

    # What was committed before the disk filled is whole, both ways of searching included, on the full disk.
    for word in ("zqx00word", "zqx01word"):
        assert finds(store, word, "dense") and finds(store, word, "lexical"), word
    listing = json.loads(run_docqa("list", "--store", store, "--json").stdout)
    assert len(listing) == 2 + stored

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_docqa("ingest", tmp_path / "many", "--store", store, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_unchanged"] == stored
    reopened = ArchivalStore(resolve(store_dir=store))
    assert set(reopened.collection.get(include=[])["ids"]) == reopened.catalog.current_ids()
    assert len(reopened.documents()) == 2 + len(many)


# -- read-only ----------------------------------------------------------------------------------------
@pytest.fixture
def read_only_store(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a store behind a read-only bind mount, the corpus it holds)."""
    corpus = tmp_path / "corpus"
    write_text(corpus / "a.txt", "\n\n".join(real_text_paragraphs(12)) + "\nThe code word is zqxalpha.")
    write_text(corpus / "b.txt", "\n\n".join(real_text_paragraphs(24)[12:]) + "\nThe code word is zqxbeta.")
    source = tmp_path / "store"
    assert run_docqa("ingest", corpus, "--store", source, "-q").returncode == 0
    view = tmp_path / "view"
    view.mkdir()
    mount("--bind", str(source), str(view))
    try:
        mount("-o", "remount,bind,ro", str(view))
        yield view, corpus
    finally:
        unmount(view)


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def search_then_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A model that searches for the code word once, then says whether it found it."""
    if not wants_function_call(body):
        return text_response("Summary.")
    results = last_tool_results(body)
    if not results:
        return tool_call_response("archival_memory_search", {"query": "zqxalpha", "request_heartbeat": True})
    return tool_call_response("send_message", {"message": "found" if "zqxalpha" in results[-1] else "missing"})


def test_a_read_only_store_serves_list_search_and_ask_and_writes_say_read_only(
        read_only_store: tuple[Path, Path]) -> None:
    store, corpus = read_only_store
    before = snapshot(store)
    listing = run_docqa("list", "--store", store)
    assert listing.returncode == 0 and "2 document(s)" in listing.stdout, listing.stderr
    for mode in ("hybrid", "dense", "lexical"):
        assert finds(store, "zqxalpha", mode), mode
    with FakeLLMServer(search_then_answer) as server:
        asked = run_docqa("ask", "What is the code word?", "--store", store, "--model", "fake", "--base-url",
                          server.base_url, "--json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["answer"] == "found"
    for args in (["ingest", corpus], ["delete", corpus / "a.txt"], ["repair"]):
        done = run_docqa(*args, "--store", store)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        one_error_line(done.stderr, "read-only store")
    assert snapshot(store) == before


def test_the_private_copy_of_a_read_only_stores_vectors_goes_when_the_process_ends(
        read_only_store: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = read_only_store
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    done = run_docqa("search", "zqxbeta", "--store", store, "--mode", "dense", env={"TMPDIR": str(temporary)})
    assert done.returncode == 0 and "zqxbeta" in done.stdout, done.stderr
    assert not list(temporary.glob("docqa-readonly-*"))
