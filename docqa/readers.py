"""Files -> pages: pypdf for PDF, plain decoding for text and markdown, with clear errors for bad files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_SUFFIXES = (".pdf", ".txt", ".md", ".markdown")

# pypdf logs recoverable damage ("incorrect startxref pointer") as warnings; the user sees our own
# one-line notices instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class ReadError(Exception):
    """A file that cannot be read; str() is the reason, for a one-line message naming the file."""


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    text: str


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES


def read_pages(path: Path, notices: list[str] | None = None) -> Iterator[Page]:
    """Yield the pages of a file one at a time (PDFs are streamed, never held whole).

    Raises ReadError for anything that makes the file unusable. Recoverable oddities (non-UTF-8 text)
    are appended to `notices` as one-line messages.
    """
    notices = notices if notices is not None else []
    if path.suffix.lower() == ".pdf":
        yield from _read_pdf(path)
    else:
        yield from _read_text(path, notices)


def _read_text(path: Path, notices: list[str]) -> Iterator[Page]:
    data = _read_bytes(path)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte order mark (Windows "Unicode" text)
        text = data.decode("utf-16", errors="replace")
        if text.count("\ufffd") > len(text) // 100:
            raise ReadError("starts like UTF-16 text but is not (or is damaged); is the extension right?")
    elif _looks_binary(data):
        raise ReadError("binary content, not text (NUL or control bytes); is the extension right?")
    else:
        text = _decode(data, notices)
    if not text.strip():
        raise ReadError("no text (only whitespace)")
    # Form feeds are the one page break plain text has.
    for number, page_text in enumerate(text.split("\f"), start=1):
        yield Page(number, page_text)


def _decode(data: bytes, notices: list[str]) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        notices.append(
            f"not valid UTF-8 (byte {exc.start}); decoded as Windows-1252/Latin-1, undecodable bytes replaced"
        )
        return data.decode("cp1252", errors="replace")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReadError("no such file") from None
    except IsADirectoryError:
        raise ReadError("is a directory") from None
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise ReadError("empty file (0 bytes)")
    return data


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return control > len(sample) * 0.05


def _read_pdf(path: Path) -> Iterator[Page]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    data_size = _file_size(path)
    if data_size == 0:
        raise ReadError("empty file (0 bytes)")
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                # Many "encrypted" PDFs only restrict printing and open with the empty password.
                if not reader.decrypt(""):
                    raise ReadError("encrypted PDF: needs a password; decrypt it first (e.g. qpdf --decrypt)")
            except FileNotDecryptedError:
                raise ReadError("encrypted PDF: needs a password; decrypt it first (e.g. qpdf --decrypt)") from None
        count = len(reader.pages)
    except ReadError:
        raise
    except (PdfReadError, RecursionError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ReadError(f"corrupt or truncated PDF ({_short(exc)})") from None
    except Exception as exc:  # pypdf raises many kinds on hostile files; none may escape as a traceback
        raise ReadError(f"unreadable PDF ({_short(exc)})") from None
    if count == 0:
        raise ReadError("PDF has no pages")
    chars = 0
    for index in range(count):
        try:
            text = reader.pages[index].extract_text() or ""
        except RecursionError:
            raise ReadError(f"corrupt PDF: page {index + 1} has a cyclic structure") from None
        except Exception as exc:
            raise ReadError(f"corrupt PDF: page {index + 1} cannot be read ({_short(exc)})") from None
        chars += len(text.strip())
        yield Page(index + 1, text)
    if chars == 0:
        raise ReadError(
            f"no extractable text in {count} page(s): a scanned or image-only PDF? run OCR first (e.g. ocrmypdf)"
        )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise ReadError("no such file") from None
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from None


def _short(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {message[:160]}" if message else name
