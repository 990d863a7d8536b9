"""PDF through pypdf, streamed a page at a time, with one-line reasons for damaged, encrypted or scanned files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from docqa.readers.base import Page, ReadError, file_size, short

SUFFIXES = (".pdf",)

# pypdf logs recoverable damage ("incorrect startxref pointer") as warnings; the user sees our own
# one-line notices instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def read_pdf(path: Path, notices: list[str]) -> Iterator[Page]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    if file_size(path) == 0:
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
        raise ReadError(f"corrupt or truncated PDF ({short(exc)})") from None
    except Exception as exc:  # pypdf raises many kinds on hostile files; none may escape as a traceback
        raise ReadError(f"unreadable PDF ({short(exc)})") from None
    if count == 0:
        raise ReadError("PDF has no pages")
    chars = 0
    for index in range(count):
        try:
            text = reader.pages[index].extract_text() or ""
        except RecursionError:
            raise ReadError(f"corrupt PDF: page {index + 1} has a cyclic structure") from None
        except Exception as exc:
            raise ReadError(f"corrupt PDF: page {index + 1} cannot be read ({short(exc)})") from None
        chars += len(text.strip())
        yield Page(index + 1, text)
    if chars == 0:
        raise ReadError(
            f"no extractable text in {count} page(s): a scanned or image-only PDF? run OCR first (e.g. ocrmypdf)"
        )
