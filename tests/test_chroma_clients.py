"""The embedded Chroma client's life in a long-lived process: opened only when the vectors are needed, and
reopened (not leaked) when another process has written, so that a chat session sees a concurrent ingest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from docqa.archive.store import ArchivalStore
from docqa.cli.config import resolve
from testkit.documents import real_text_paragraphs, write_text
from tests.helpers import run_docqa


def _ingest_elsewhere(path: Path) -> None:
    """An ingest by another process, as a second terminal would run it."""
    done = run_docqa("ingest", path, "--quiet")
    assert done.returncode == 0, done.stderr


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _found(store: ArchivalStore, code: str) -> bool:
    return any(code in hit.record.text for hit in store.search(code, mode="dense", page_size=50).hits)


def test_a_long_lived_store_sees_other_processes_ingests_without_leaking(tmp_path: Path, embedder: Any) -> None:
    corpus = tmp_path / "corpus"
    write_text(corpus / "first.txt", "\n\n".join(real_text_paragraphs(4)) + "\nThe first code is zqxfirst.")
    _ingest_elsewhere(corpus / "first.txt")
    store = ArchivalStore(resolve(), embedder=embedder)
    assert _found(store, "zqxfirst")
    opened = _open_files()
    for n in range(4):  # each new document makes the store reopen its client before the next search
        write_text(corpus / f"more{n}.txt", "\n\n".join(real_text_paragraphs(3)) + f"\nLater code zqxlater{n}.")
        _ingest_elsewhere(corpus / f"more{n}.txt")
        assert _found(store, f"zqxlater{n}"), n
    # An engine left open per reopen cost about 11 files (and 9 MB) each: a chat beside an ingest would run out.
    assert _open_files() <= opened + 4


def test_two_stores_on_one_directory_in_one_process_both_see_new_writes(tmp_path: Path, embedder: Any) -> None:
    """Where chromadb's public close() cannot drop a path's cached engine (another client holds it), docqa drops
    it from chromadb's private per-path cache: this fails if chromadb stops keeping engines there."""
    from chromadb.api.shared_system_client import SharedSystemClient

    assert isinstance(SharedSystemClient._identifier_to_system, dict), "chromadb changed its per-path engine cache"
    corpus = tmp_path / "corpus"
    write_text(corpus / "a.txt", "\n\n".join(real_text_paragraphs(4)) + "\nThe code is zqxalpha.")
    _ingest_elsewhere(corpus / "a.txt")
    one, two = ArchivalStore(resolve(), embedder=embedder), ArchivalStore(resolve(), embedder=embedder)
    assert _found(one, "zqxalpha") and _found(two, "zqxalpha")
    write_text(corpus / "b.txt", "\n\n".join(real_text_paragraphs(3)) + "\nThe code is zqxbeta.")
    _ingest_elsewhere(corpus / "b.txt")
    assert _found(one, "zqxbeta")
    assert _found(two, "zqxbeta")


def test_no_command_that_only_reads_imports_chromadb(tmp_path: Path, embedder: Any) -> None:
    """`docqa list` and lexical search need only the catalog, and dense and hybrid search ask Chroma's engine
    directly (docqa.archive.chroma.EngineReader): none of them pays for importing chromadb (about 0.9 s). If
    chromadb changes its engine's bindings, the search falls back to the client, and this fails."""
    write_text(tmp_path / "a.txt", "\n\n".join(real_text_paragraphs(3)) + "\nThe code is zqxlexical.")
    _ingest_elsewhere(tmp_path / "a.txt")
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom docqa.cli import main\n"
             "for args in (['list'], ['search', 'zqxlexical', '--mode', 'lexical'], ['search', 'zqxlexical'],\n"
             "             ['search', 'code', '--mode', 'dense']):\n"
             "    result = CliRunner().invoke(main, args)\n    assert result.exit_code == 0, result.output\n"
             "    assert 'zqxlexical' in result.output or args == ['list'], result.output\n"
             "print('chromadb' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_chromas_engine_and_its_client_answer_alike(tmp_path: Path, embedder: Any) -> None:
    from docqa.archive.chroma import EngineReader

    write_text(tmp_path / "a.txt", "\n\n".join(real_text_paragraphs(40)))
    _ingest_elsewhere(tmp_path / "a.txt")
    store = ArchivalStore(resolve(), embedder=embedder)
    vector = embedder.embed(["the history of the river valley"]).tolist()
    ids, distances = EngineReader(resolve().store_dir, "docqa").nearest(vector, 25)
    with store._chroma() as collection:
        expected = collection.query(query_embeddings=vector, n_results=25, include=["distances"])
    assert len(ids) == min(25, store.count()) > 5
    assert ids == expected["ids"][0]
    assert distances == [round(d, 6) for d in expected["distances"][0]] or \
        max(abs(a - b) for a, b in zip(distances, expected["distances"][0], strict=True)) < 1e-6
