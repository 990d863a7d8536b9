"""Running the real `docqa` command in-process (CliRunner) or as a subprocess, and reading the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from docqa.archive.store import ArchivalStore
from docqa.chunking import chunk_pages
from docqa.cli.config import resolve
from docqa.cli.main import main
from docqa.ingest.files import file_hash, source_of
from docqa.readers import Page, read_pages
from testkit.documents import real_text_paragraphs, write_multipage_pdf

DOCQA = Path(sys.executable).parent / "docqa"  # the console script installed with the package


def invoke(*args: object) -> Result:
    """`docqa ARGS...` in this process (stdout and stderr kept apart); exceptions are not swallowed."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def invoke_json(*args: object) -> tuple[Result, Any]:
    result = invoke(*args, "--json")
    assert result.stdout.strip(), f"no JSON on stdout; stderr: {result.stderr}"
    return result, json.loads(result.stdout)


def run_docqa(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`docqa ARGS...` as a real subprocess, the way a user runs it."""
    return subprocess.run([str(DOCQA), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def search_json(query: str, *args: object) -> dict[str, Any]:
    result, payload = invoke_json("search", query, *args)
    assert result.exit_code == 0, result.stderr
    return payload


def ingest_json(*args: object) -> tuple[int, dict[str, Any], str]:
    """Run `docqa ingest ARGS --json`; return (exit code, report, stderr)."""
    result, payload = invoke_json("ingest", *args)
    return result.exit_code, payload, result.stderr


def open_store(**flags: Any) -> ArchivalStore:
    """The store the CLI would open with these flags (env vars apply, as for the CLI)."""
    return ArchivalStore(resolve(**flags))


def stored_chunks(**flags: Any) -> list[tuple[str, dict[str, Any]]]:
    """(text, metadata) of every chunk physically in Chroma, in document and chunk order."""
    got = open_store(**flags).collection.get(include=["documents", "metadatas"])
    rows = list(zip(got["documents"], got["metadatas"], strict=True))
    return sorted(rows, key=lambda row: (row[1]["source"], row[1]["chunk"]))


def write_pending(store: Any, embedder: Any, source: str, text: str) -> str:
    """What an ingest killed after writing a batch leaves behind: a begun, uncommitted version."""
    generation = store.begin_document(source, "f" * 64)
    chunks = list(chunk_pages([Page(1, text)], embedder.tokenizer, 200, 40))
    store.add_chunks(generation, source, chunks, embedder.embed([c.text for c in chunks]))
    return generation


def assert_invisible(word: str) -> None:
    for mode in ("hybrid", "dense", "lexical"):
        results = search_json(word, "--mode", mode, "--page-size", 100)["results"]
        assert not [hit for hit in results if word in hit["text"]], mode


def long_pdf(path: Path, pages: int = 24) -> Path:
    """A real multi-page PDF of Wikipedia passages (about 3 chunks a page) holding one unique word."""
    paragraphs = iter(real_text_paragraphs(pages * 5))
    texts = [" ".join(next(paragraphs) for _ in range(5)) for _ in range(pages)]
    texts[pages // 2] += " The catalogue number is zqxresumed."
    return write_multipage_pdf(path, texts)


def half_written(pdf: Path, embedder: Any, vectors: int) -> tuple[str, int]:
    """What an ingest killed inside a Chroma write leaves: every chunk row of the file's version in the
    catalog, and the vectors of its first `vectors` chunks only. Returns (generation, chunks)."""
    store = open_store()
    with store.writing():
        source = source_of(pdf)
        generation = store.begin_document(source, file_hash(pdf))
        chunks = list(chunk_pages(read_pages(pdf, []), embedder.tokenizer, 200, 40))
        store.record_chunks(generation, source, chunks)
        store.add_vectors([(generation, source, chunk) for chunk in chunks[:vectors]],
                          embedder.embed([c.text for c in chunks[:vectors]]))
    return generation, len(chunks)


def hear_ctrl_c() -> None:
    """In a child about to run docqa: take SIGINT's default action back. A shell starts background jobs with
    SIGINT ignored, children inherit that, and Python then never turns SIGINT into KeyboardInterrupt: run
    from `cmd &` or nohup, a test that interrupts docqa would see it finish instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
