"""Files -> pages: one small module per format, each with clear one-line errors for bad files.

Paged formats (PDF; text, split at form feeds) yield their pages. Non-paged ones (HTML, DOCX, EPUB) yield one
Page per paragraph, numbered through the document and labelled with the heading path above it; `location`
turns that into what a citation shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path, PurePath

from docqa.readers import docx, epub, html, pdf, text
from docqa.readers.base import Page, ReadError

__all__ = ["SUPPORTED_SUFFIXES", "Page", "ReadError", "is_paged", "is_supported", "location", "read_pages"]

_READERS: dict[str, Callable[[Path, list[str]], Iterator[Page]]] = {
    **dict.fromkeys(pdf.SUFFIXES, pdf.read_pdf),
    **dict.fromkeys(text.SUFFIXES, text.read_text),
    **dict.fromkeys(html.SUFFIXES, html.read_html),
    **dict.fromkeys(docx.SUFFIXES, docx.read_docx),
    **dict.fromkeys(epub.SUFFIXES, epub.read_epub),
}
SUPPORTED_SUFFIXES = tuple(_READERS)
_PARAGRAPHED = frozenset(html.SUFFIXES + docx.SUFFIXES + epub.SUFFIXES)


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in _READERS


def is_paged(source: str | PurePath) -> bool:
    """Whether a document's Page numbers are pages (PDF, text) rather than paragraphs (HTML, DOCX, EPUB)."""
    return PurePath(source).suffix.lower() not in _PARAGRAPHED


def read_pages(path: Path, notices: list[str] | None = None) -> Iterator[Page]:
    """Yield the pages of a file one at a time (PDFs are streamed, never held whole).

    Raises ReadError for anything that makes the file unusable. Recoverable oddities (non-UTF-8 text)
    are appended to `notices` as one-line messages.
    """
    notices = notices if notices is not None else []
    reader = _READERS.get(path.suffix.lower(), text.read_text)
    yield from reader(path, notices)


def location(source: str | PurePath, first: int, last: int, section: str = "") -> str:
    """Where a chunk of `source` is, as a search result or citation shows it: `page 3`, `page 1-2`, or for a
    non-paged document `section "Install > Linux" (paragraph 12)`."""
    span = str(first) if first == last else f"{first}-{last}"
    if is_paged(source):
        return f"page {span}"
    paragraphs = f"paragraph {span}" if first == last else f"paragraphs {span}"
    return f'section "{section}" ({paragraphs})' if section else paragraphs
