"""Plain text, markdown and source-like text (reStructuredText, CSV, JSON, logs): decoded, split at form feeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from docqa.readers.base import Page, ReadError, decode_text, read_bytes

SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".csv", ".json", ".log")


def read_text(path: Path, notices: list[str]) -> Iterator[Page]:
    text = decode_text(read_bytes(path), notices)
    if not text.strip():
        raise ReadError("no text (only whitespace)")
    # Form feeds are the one page break plain text has.
    for number, page_text in enumerate(text.split("\f"), start=1):
        yield Page(number, page_text)
