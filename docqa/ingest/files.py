"""The files of an ingest: which paths to read (regular files only), their identity (path and hash)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from docqa.ingest.report import FileFailure, IngestReport
from docqa.ingest.time_limit import FileTimeout, time_limited
from docqa.readers import SUPPORTED_SUFFIXES, is_supported

__all__ = ["FileTimeout", "NotRegular", "count_pages", "discover", "file_hash", "open_regular", "source_of",
           "time_limited"]

_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


class NotRegular(Exception):
    """A path the ingest will not open: not a regular file, a symlink loop, a broken symlink. str() is the
    reason, for a one-line message naming the path."""


def classify(path: Path) -> tuple[str, str]:
    """What `path` is, told from stat alone, without opening it (opening a FIFO blocks until a writer comes,
    reading /dev/zero never ends): ("file" | "directory", "") or ("missing" | "refused", the reason)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "refused", "symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(path):
                # realpath: the end of a chain of links, which is what is missing
                return "refused", f"broken symlink (it points to {os.path.realpath(path)}, which does not exist)"
            return "missing", "no such file or directory"
        return "refused", f"cannot read: {exc.strerror or exc}"
    if stat.S_ISREG(info.st_mode):
        return "file", ""
    if stat.S_ISDIR(info.st_mode):
        return "directory", ""
    what = next((name for is_kind, name in _SPECIAL if is_kind(info.st_mode)), "an unusual kind of file")
    if os.path.islink(path):
        what = f"a symlink to {what}, {os.path.realpath(path)}"
    return "refused", f"not a regular file ({what})"


def discover(paths: Iterable[Path], report: IngestReport, notice: Callable[[str], None]) -> list[Path]:
    """Expand directories (recursively, sorted) into the regular files to read. A path named on the command
    line that cannot be read is a failure; one found in a directory is skipped with a notice."""
    files: list[Path] = []
    for path in paths:
        kind, reason = classify(path)
        if kind in ("missing", "refused"):
            # Named on the command line: the user meant it, so not reading it is a failure, not a skip.
            report.files_failed.append(FileFailure(str(path), reason))
            notice(f"error: {path}: {reason}")
            continue
        if kind == "file":
            candidates = [path]
        else:
            candidates = []
            for entry in sorted(p for p in path.rglob("*") if not p.name.startswith(".")):
                kind, reason = classify(entry)
                if kind == "file":
                    candidates.append(entry)
                elif kind == "refused":
                    _skip(report, notice, entry, reason)
                elif kind == "directory" and entry.is_symlink():
                    # rglob does not follow them (which keeps a link to ".." from looping): say so.
                    _skip(report, notice, entry, "a symlink to a directory (not followed: name it to ingest it)")
                # a real directory is walked by rglob; "missing" is an entry deleted since it was listed
        for candidate in candidates:
            if is_supported(candidate):
                files.append(candidate)
                continue
            reason = (f"unsupported type '{candidate.suffix or '(none)'}' (docqa reads "
                      f"{', '.join(SUPPORTED_SUFFIXES)})")
            if candidate is path:
                report.files_failed.append(FileFailure(str(candidate), reason))
                notice(f"error: {candidate}: {reason}")
            else:
                _skip(report, notice, candidate, reason, "not a supported type")
    return list(dict.fromkeys(files))


def _skip(report: IngestReport, notice: Callable[[str], None], path: Path, reason: str,
          kind: str | None = None) -> None:
    report.skip(str(path), kind or reason.split(" (")[0])
    notice(f"skipped: {path}: {reason}")


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading if it is a regular file; raise NotRegular otherwise, without blocking.

    discover() already left out everything else, but the path may have been replaced since: so it is
    checked again just before, and the open itself is non-blocking (a FIFO swapped in would otherwise block
    it) and checked after with fstat.
    """
    kind, reason = classify(path)
    if kind == "missing":
        raise FileNotFoundError(errno.ENOENT, reason, str(path))
    if kind != "file":
        raise NotRegular(reason)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # O_NONBLOCK changes nothing for a file
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegular("not a regular file (it was replaced while docqa read the directory)")
    return os.fdopen(fd, "rb")


def file_hash(path: Path, seconds: float = 0.0) -> str:
    """The SHA-256 of a regular file's bytes, under a limit of `seconds` of CPU time (0: none).

    Hashing cannot hang: only regular files are opened (open_regular). It is still limited, like reading:
    a regular file can be huge at no cost (`truncate -s 1T`), and hashing it would hold the store's write
    lock for many minutes before reading even starts.
    """
    def digest() -> Iterator[str]:
        hasher = hashlib.sha256()
        with open_regular(path) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        yield hasher.hexdigest()

    limited = time_limited(digest(), seconds)
    try:
        return next(limited)
    finally:
        limited.close()


def source_of(path: Path) -> str:
    """A document's key in the store: its absolute path, any bytes of it that are not UTF-8 as \\xNN."""
    return os.fsencode(path.expanduser().resolve()).decode("utf-8", "backslashreplace")


def count_pages(path: Path, file_timeout: float) -> int:
    """How many pages the reader will make of `path` (a PDF's page count, a text's form feeds + 1), for the
    bar's total; 1 when it cannot be told quickly (the reader then reports what is wrong)."""
    def count() -> Iterator[int]:
        if path.suffix.lower() == ".pdf":
            from pypdf import PdfReader

            with open_regular(path) as handle:
                yield len(PdfReader(handle).pages)
        else:
            with open_regular(path) as handle:
                yield sum(block.count(b"\f") for block in iter(lambda: handle.read(1 << 20), b"")) + 1

    counting = time_limited(count(), min(file_timeout, 10.0) if file_timeout > 0 else 10.0)
    try:
        return max(1, next(counting))
    except (Exception, FileTimeout):  # a damaged PDF: reading it says what is wrong
        return 1
    finally:
        counting.close()
