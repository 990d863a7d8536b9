"""Resuming an interrupted ingest: what a killed `docqa ingest` embedded is reused by the re-run, and the
store then equals a clean ingest of the same file (same documents, chunk ids, texts and search results)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from docqa.ingest.files import source_of
from testkit.documents import write_text
from tests.helpers import (
    DOCQA,
    hear_ctrl_c,
    assert_invisible,
    half_written,
    ingest_json,
    invoke,
    invoke_json,
    long_pdf,
    open_store,
    search_json,
)

QUERIES = ["the first world war", "who wrote the song", "population of the city", "river flows into the sea"]


def pending_rows(store: Path) -> int:
    """Chunk rows the catalog holds of versions not (yet) committed."""
    path = store / "docqa.catalog.sqlite3"
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM chunks WHERE generation NOT IN"
                                  " (SELECT generation FROM documents)").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet


def interrupted_ingest(path: Path, store: Path, rows: int, how: signal.Signals) -> subprocess.CompletedProcess:
    """Run the real `docqa ingest` and send it `how` once the catalog holds `rows` pending chunk rows."""
    process = subprocess.Popen([str(DOCQA), "ingest", str(path), "--store", str(store), "-q", "--batch-size", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=hear_ctrl_c)
    deadline = time.monotonic() + 300
    while process.poll() is None and pending_rows(store) < rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, f"the ingest ended before it could be interrupted: {process.stderr.read()}"
    process.send_signal(how)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def snapshot(store: Path) -> dict[str, Any]:
    """What a user can tell of a store: its documents, its committed chunks, Chroma's ids and searches."""
    opened = open_store(store_dir=store)
    rows = opened.catalog.committed_rows()
    chroma = opened.collection.get(include=["documents"])
    searches = {(query, mode): [hit["id"] for hit in search_json(query, "--store", store, "--mode", mode,
                                                                 "--page-size", 10)["results"]]
                for query in QUERIES for mode in ("dense", "hybrid")}
    return {"documents": opened.documents(), "chunks": sorted(rows),
            "chroma": sorted(zip(chroma["ids"], chroma["documents"], strict=True)), "searches": searches,
            "pending": opened.catalog.orphans()}


def clean_snapshot(path: Path, tmp_path: Path) -> dict[str, Any]:
    clean = tmp_path / "clean-store"
    code, _, stderr = ingest_json(path, "--store", clean)
    assert code == 0, stderr
    return snapshot(clean)


@pytest.fixture(scope="module")
def long_document(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> tuple[Path, dict[str, Any]]:
    """A long PDF (one path for the module: a store keys documents by path) and a clean ingest's snapshot."""
    pdf = long_pdf(tmp_path_factory.mktemp("resume") / "long.pdf")
    return pdf, clean_snapshot(pdf, pdf.parent)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_an_interrupted_ingest_is_resumed_by_the_rerun(tmp_path: Path, long_document: tuple[Path, dict[str, Any]],
                                                       how: signal.Signals) -> None:
    pdf, clean = long_document
    store = tmp_path / "store"
    stopped = interrupted_ingest(pdf, store, 48, how)
    if how == signal.SIGINT:
        assert stopped.returncode == 130 and "interrupted" in stopped.stderr, stopped.stderr
        assert "Traceback" not in stopped.stderr
    else:
        assert stopped.returncode == -signal.SIGKILL
    assert pending_rows(store) >= 48  # kept for the re-run...
    assert_invisible("zqxresumed")  # ...and invisible to search meanwhile

    rerun = invoke("ingest", pdf, "--store", store)
    assert rerun.exit_code == 0, rerun.stderr
    summary = rerun.stdout.strip().splitlines()[-1]
    reused, total = (int(n) for n in summary.split("resumed: ")[1].split(" chunks reused")[0].split(" of "))
    assert 32 <= reused < total, summary  # the writes before the last one the run began, at least
    assert "1 file(s) ingested" in summary and f"{total} chunks added" in summary, summary
    assert f"note: {pdf}: resumed an interrupted ingest: {reused} of {total} chunks reused" in rerun.stderr

    resumed = snapshot(store)
    assert not resumed["pending"]
    assert len(resumed["chunks"]) == total == len(resumed["chroma"])
    assert resumed == clean
    assert "zqxresumed" in search_json("zqxresumed", "--store", store)["results"][0]["text"]


def test_chunks_recorded_but_not_in_chroma_are_embedded_again(tmp_path: Path, embedder: Any) -> None:
    pdf = long_pdf(tmp_path / "long.pdf", pages=8)
    _, total = half_written(pdf, embedder, 10)

    code, report, stderr = ingest_json(pdf)
    assert code == 0, stderr
    assert (report["chunks_reused"], report["chunks_added"]) == (10, total)
    resumed = snapshot(tmp_path / "store")
    assert resumed == clean_snapshot(pdf, tmp_path)


def test_a_pending_version_not_resumed_is_removed_by_the_next_ingest(tmp_path: Path, embedder: Any) -> None:
    pdf = long_pdf(tmp_path / "long.pdf", pages=4)
    other = write_text(tmp_path / "other.txt", "Another document, about windmills.")
    generation, _ = half_written(pdf, embedder, 6)

    code, report, _ = ingest_json(other)  # an ingest of other files: the interrupted one is not resumed
    assert code == 0 and report["chunks_reused"] == 0
    store = open_store()
    assert not store.catalog.orphans()
    assert not store.collection.get(where={"generation": generation}, include=[])["ids"]
    assert [doc.source for doc in store.documents()] == [source_of(other)]

    generation, _ = half_written(pdf, embedder, 6)
    long_pdf(pdf, pages=5)  # the file changed since: its interrupted version is of no use
    code, report, _ = ingest_json(pdf)
    assert code == 0 and report["chunks_reused"] == 0
    store = open_store()
    assert not store.collection.get(where={"generation": generation}, include=[])["ids"]
    assert set(store.collection.get(include=[])["ids"]) == store.catalog.current_ids()
    assert not store.catalog.orphans()


# The limit is a repeating SIGALRM; one that lands in a gc callback is ignored there with this warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_file_over_its_time_limit_keeps_what_it_embedded_for_the_rerun(tmp_path: Path, embedder: Any) -> None:
    pdf = long_pdf(tmp_path / "long.pdf")
    # Reading and chunking this PDF takes a fraction of a second: find a limit it runs past after some of
    # its chunks were stored (one write per 4 chunks), whatever the machine's speed.
    for limit in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6):
        store = tmp_path / f"store-{limit}"
        result, report = invoke_json("ingest", pdf, "--store", store, "--file-timeout", limit, "--batch-size", 1)
        if report["files_ingested"]:
            pytest.fail(f"reading never ran past {limit} s after storing some chunks")
        assert result.exit_code == 1 and "took longer than" in report["files_failed"][0]["error"]
        if "resumes from the chunks embedded so far" in result.stderr:
            break
    assert search_json("zqxresumed", "--store", store)["total"] == 0  # kept, not visible

    code, report, stderr = ingest_json(pdf, "--store", store, "--file-timeout", 0)
    assert code == 0, stderr
    assert 0 < report["chunks_reused"] < report["chunks_added"]
    assert snapshot(store) == clean_snapshot(pdf, tmp_path)
