"""The files of an ingest: which paths to read, their identity (path and hash), and the time limit on reading."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from docqa.ingest.report import FileFailure, IngestReport
from docqa.readers import SUPPORTED_SUFFIXES, is_supported


def discover(paths: Iterable[Path], report: IngestReport, notice: Callable[[str], None]) -> list[Path]:
    """Expand directories (recursively, sorted); report missing paths and skip unsupported files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            candidates = [path]
        else:
            report.files_failed.append(FileFailure(str(path), "no such file or directory"))
            notice(f"error: {path}: no such file or directory")
            continue
        for candidate in candidates:
            if is_supported(candidate):
                files.append(candidate)
            elif candidate is path:
                # Named on the command line: the user meant it, so not reading it is a failure, not a skip.
                reason = (f"unsupported type '{candidate.suffix or '(none)'}' (docqa reads "
                          f"{', '.join(SUPPORTED_SUFFIXES)})")
                report.files_failed.append(FileFailure(str(candidate), reason))
                notice(f"error: {candidate}: {reason}")
            else:
                report.files_skipped.append(str(candidate))
                notice(f"skipped: {candidate}: unsupported type '{candidate.suffix or '(none)'}' "
                       f"(docqa reads {', '.join(SUPPORTED_SUFFIXES)})")
    return list(dict.fromkeys(files))


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_of(path: Path) -> str:
    """A document's key in the store: its absolute path, any bytes of it that are not UTF-8 as \\xNN."""
    return os.fsencode(path.expanduser().resolve()).decode("utf-8", "backslashreplace")


T = TypeVar("T")


class FileTimeout(BaseException):
    """Reading one file used up --file-timeout. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in pypdf or the readers can swallow it."""


def time_limited(items: Iterator[T], seconds: float) -> Iterator[T]:
    """Yield from `items`, raising FileTimeout once producing them (not consuming them) took `seconds`.

    Reading and chunking are what a hostile file controls (a cyclic PDF, a 5 MB line); embedding and
    storing are bounded by the text they get, so a large but sound file is not cut short. SIGALRM only
    works in the main thread; elsewhere the items pass through unlimited. An outer alarm (e.g.
    pytest-timeout's) is put back afterwards.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield from items
        return

    def expire(*_: object) -> None:
        raise FileTimeout

    entered = time.monotonic()
    outer_delay, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_handler = signal.signal(signal.SIGALRM, expire)
    left = seconds
    try:
        while True:
            if left <= 0:
                raise FileTimeout
            started = time.monotonic()
            # Repeats every 0.5 s: an alarm that lands in a finalizer is swallowed there ("Exception ignored").
            signal.setitimer(signal.ITIMER_REAL, left, 0.5)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                left -= time.monotonic() - started
            yield item
    finally:
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_delay:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - entered), 0.001))


def count_pages(path: Path, file_timeout: float) -> int:
    """How many pages the reader will make of `path` (a PDF's page count, a text's form feeds + 1), for the
    bar's total; 1 when it cannot be told quickly (the reader then reports what is wrong)."""
    def count() -> Iterator[int]:
        if path.suffix.lower() == ".pdf":
            from pypdf import PdfReader

            yield len(PdfReader(path).pages)
        else:
            with open(path, "rb") as handle:
                yield sum(block.count(b"\f") for block in iter(lambda: handle.read(1 << 20), b"")) + 1

    counting = time_limited(count(), min(file_timeout, 10.0) if file_timeout > 0 else 10.0)
    try:
        return max(1, next(counting))
    except (Exception, FileTimeout):  # a damaged PDF: reading it says what is wrong
        return 1
    finally:
        counting.close()
