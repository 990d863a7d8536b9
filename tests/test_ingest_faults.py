"""Ingest faults a hostile tester found (issue 13): paths that are not regular files (FIFOs, devices, sockets,
symlink loops), named or found in a directory; and a --file-timeout that measures the file's CPU time, not
how busy the machine is, and covers hashing too."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF

from docqa.ingest.files import FileTimeout, time_limited
from testkit.documents import real_text_paragraphs, write_text
from testkit.hostile import huge_line
from tests.helpers import invoke, invoke_json, run_docqa, search_json

GOOD_TEXT = "The quokka smiles at the camera. " + " ".join(real_text_paragraphs(2))


# -- paths that are not regular files ----------------------------------------------------------------
def test_a_named_fifo_or_device_is_refused_in_one_line_without_being_read(tmp_path: Path, embedder: Any) -> None:
    fifo = tmp_path / "f.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    noise = tmp_path / "noise.md"
    noise.symlink_to("/dev/urandom")
    good = write_text(tmp_path / "good.txt", GOOD_TEXT)
    # A real process with a time limit: before the fix it read the FIFO forever, holding the store's write
    # lock, with no output.
    try:
        done = run_docqa("ingest", fifo, zero, noise, good, "--json", timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("docqa ingest hung on a FIFO or a device")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert {Path(f["path"]).name: f["error"] for f in report["files_failed"]} == {
        "f.txt": "not a regular file (a FIFO)",
        "zero.txt": "not a regular file (a symlink to a character device, /dev/zero)",
        "noise.md": "not a regular file (a symlink to a character device, /dev/urandom)",
    }
    assert f"error: {fifo}: not a regular file (a FIFO)" in done.stderr.splitlines()
    assert report["files_ingested"] == 1  # the good file named beside them goes in
    assert Path(search_json("quokka")["results"][0]["source"]).name == "good.txt"


def test_named_symlink_loops_and_broken_symlinks_say_so(tmp_path: Path, embedder: Any) -> None:
    loop = tmp_path / "loop.txt"
    loop.symlink_to("other.txt")
    (tmp_path / "other.txt").symlink_to("loop.txt")
    broken = tmp_path / "broken.pdf"
    broken.symlink_to("gone.pdf")
    result, report = invoke_json("ingest", loop, broken)
    assert result.exit_code == 1
    failed = {Path(f["path"]).name: f["error"] for f in report["files_failed"]}
    assert failed["loop.txt"] == "symlink loop"  # it said "no such file or directory"
    assert failed["broken.pdf"].startswith("broken symlink") and str(tmp_path / "gone.pdf") in failed["broken.pdf"]
    assert f"error: {loop}: symlink loop" in result.stderr.splitlines()


def test_in_a_directory_each_non_regular_file_is_skipped_with_a_notice(tmp_path: Path, embedder: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    write_text(docs / "good.txt", GOOD_TEXT)
    os.mkfifo(docs / "pipe.txt")
    monkeypatch.chdir(docs)  # a relative name: a socket's path must be short
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock.md")
    (docs / "zero.txt").symlink_to("/dev/zero")
    (docs / "loop.txt").symlink_to("loop.txt")
    (docs / "broken.txt").symlink_to("missing.txt")
    (tmp_path / "elsewhere").mkdir()
    (docs / "linked").symlink_to(tmp_path / "elsewhere")
    (docs / "table.xlsx").write_bytes(b"PK not read")
    expected = {
        "pipe.txt": "not a regular file (a FIFO)",
        "sock.md": "not a regular file (a socket)",
        "zero.txt": "not a regular file (a symlink to a character device, /dev/zero)",
        "loop.txt": "symlink loop",
        "broken.txt": f"broken symlink (it points to {docs / 'missing.txt'}, which does not exist)",
        "linked": "a symlink to a directory (not followed: name it to ingest it)",
    }

    result, report = invoke_json("ingest", docs)
    assert result.exit_code == 0, result.stderr  # skipped, as an unsupported type is: not failures
    assert report["files_ingested"] == 1 and report["files_failed"] == []
    assert {Path(p).name for p in report["files_skipped"]} == {*expected, "table.xlsx"}
    lines = result.stderr.splitlines()
    for name, reason in expected.items():  # before the fix: nothing said about any of them
        assert f"skipped: {docs / name}: {reason}" in lines, name
    assert [line for line in lines if "table.xlsx" in line and "unsupported type" in line]

    again = invoke("ingest", docs)  # the text summary says why, grouped
    summary = again.stdout.strip().splitlines()[-1]
    assert "7 skipped (" in summary and "not a regular file" in summary and "symlink loop" in summary, summary


# -- the time limit: CPU time spent on the file -------------------------------------------------------
def sleeping(items: int, seconds: float) -> Iterator[int]:
    """A producer that waits (as on a machine too busy to run it) without using CPU."""
    for n in range(items):
        time.sleep(seconds)
        yield n


def spinning(cap: float = 20.0) -> Iterator[int]:
    """A producer that burns CPU without yielding, like a hostile file; it gives up after `cap` CPU seconds
    so that a limit that does not work fails the test instead of hanging it."""
    started = time.thread_time()
    while time.thread_time() - started < cap:
        pass
    yield 0


def test_waiting_does_not_count_against_the_limit_and_burning_cpu_does() -> None:
    # 1.2 s of waiting under a 0.3 s limit: a wall-clock limit stopped this.
    assert list(time_limited(sleeping(4, 0.3), 0.3)) == [0, 1, 2, 3]
    started = time.thread_time()
    with pytest.raises(FileTimeout):
        list(time_limited(spinning(), 0.3))
    assert time.thread_time() - started < 10  # stopped by the limit, not by the producer giving up


def test_other_threads_cpu_time_does_not_count_against_the_limit() -> None:
    # ITIMER_PROF counts the whole process: another thread's work must not be charged to the file.
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            pass

    other = threading.Thread(target=burn, daemon=True)
    other.start()
    try:
        assert list(time_limited(sleeping(4, 0.3), 0.3)) == [0, 1, 2, 3]
    finally:
        stop.set()
        other.join()


def test_consuming_the_items_does_not_count_against_the_limit() -> None:
    got = []
    for item in time_limited(iter(range(3)), 0.3):
        started = time.thread_time()
        while time.thread_time() - started < 0.2:  # embedding and storing a chunk: not the file's doing
            pass
        got.append(item)
    assert got == [0, 1, 2]


def test_hashing_is_under_the_limit_too(tmp_path: Path, embedder: Any) -> None:
    # A file can be huge at no cost (sparse); hashing it held the write lock for as long as it took.
    huge = tmp_path / "sparse.txt"
    with open(huge, "wb") as handle:
        handle.truncate(128 << 20)
    result, report = invoke_json("ingest", huge, "--file-timeout", "0.01")
    assert result.exit_code == 1
    [failure] = report["files_failed"]
    assert failure["error"].startswith("hashing took longer than 0.01 s of CPU time (--file-timeout)"), failure


# -- the limit on a busy machine, for real ------------------------------------------------------------
BURNER = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
parent, end = os.getppid(), time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while os.getppid() == parent and time.monotonic() < end:  # never outlives the test
    for _ in range(100_000):
        pass
"""


@contextmanager
def a_busy_core(burners: int) -> Iterator[None]:
    """Pin this thread to one CPU shared with `burners` processes spinning on it: the thread then gets about
    1/(burners + 1) of that CPU, so its wall time runs several times its CPU time, as on a loaded machine.
    Only one CPU is loaded (the other cores of a shared machine are left alone) and the ratio does not
    depend on what else runs there."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs sched_setaffinity (Linux)")
    original = os.sched_getaffinity(0)
    cpu = max(original)
    procs = [subprocess.Popen([sys.executable, "-c", BURNER, str(cpu), "120"], stdout=subprocess.PIPE, text=True)
             for _ in range(burners)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {cpu})  # this thread only: threads started later inherit it
        yield
    finally:
        os.sched_setaffinity(0, original)
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def write_chart_pdf(path: Path, pages: int, marks: int = 1000) -> Path:
    """A sound PDF that costs CPU to read but holds little text (so little to embed): each page is a chart's
    worth of vector marks, which pypdf parses to find the text, and one line of text."""
    pdf = FPDF(format="A4")
    pdf.set_font("Helvetica", size=11)
    for n in range(pages):
        pdf.add_page()
        for k in range(marks):
            pdf.rect(10 + (k % 90) * 2, 20 + (k // 90) * 2, 1.5, 1.5)
        pdf.set_xy(15, 250)
        pdf.cell(0, 5, f"Page {n + 1} of a report full of charts. The code word is zqxchart{n + 1}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(pdf.output()))
    return path


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see test_hostile_input
def test_on_a_busy_machine_a_sound_file_goes_in_and_a_hostile_one_is_still_stopped(tmp_path: Path,
                                                                                 embedder: Any) -> None:
    docs = tmp_path / "docs"
    # About 0.15 s of CPU to read, under a 0.6 s limit; sharing a CPU six ways, over 0.9 s of wall time.
    write_chart_pdf(docs / "a-sound.pdf", pages=10)
    write_text(docs / "b-hostile.txt", huge_line(5 << 20, words=True))  # many CPU seconds to chunk
    # The store, Chroma's threads and the model are made before the pin (threads inherit it); pypdf is warmed.
    invoke("ingest", write_chart_pdf(tmp_path / "warm.pdf", pages=1))
    # A full collection of the test process's heap (all that earlier tests left) costs 0.3 s or more of CPU:
    # done now, it does not land in the reading and blur the margin between 0.15 s and the limit.
    gc.collect()

    with a_busy_core(burners=5):
        result, report = invoke_json("ingest", docs, "--file-timeout", "0.6")

    assert result.exit_code == 1, result.stderr
    assert report["files_ingested"] == 1 and report["pages"] == 10  # before the fix: discarded as too slow
    [failure] = report["files_failed"]
    assert Path(failure["path"]).name == "b-hostile.txt"
    assert "took longer than 0.6 s of CPU time (--file-timeout)" in failure["error"]
    hits = search_json("zqxchart10", "--mode", "lexical")["results"]
    assert hits and Path(hits[0]["source"]).name == "a-sound.pdf"
