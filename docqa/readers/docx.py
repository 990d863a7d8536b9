"""Word documents (.docx) through python-docx: body paragraphs and tables in order, headings as the section
path; page headers, footers and comments are left out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docqa.readers.base import Outline, Page, ReadError, open_zip, short

SUFFIXES = (".docx",)

# Word's built-in heading styles, by name or id ("Heading 2", "Heading2"); "Title" heads them all.
_HEADING = re.compile(r"heading\s*([1-9])$", re.I)


def read_docx(path: Path, notices: list[str]) -> Iterator[Page]:
    with open_zip(path, "DOCX") as archive:
        if "word/document.xml" not in archive.namelist():
            raise ReadError("not a DOCX: the zip has no word/document.xml (damaged, or another format named .docx?)")
    try:
        import docx
        from docx.table import Table
    except ImportError:
        raise ReadError("reading .docx needs python-docx: pip install python-docx") from None
    outline = Outline()
    try:
        document = docx.Document(str(path))
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                for row in _rows(block):
                    outline.paragraph(row)
                continue
            level = _heading_level(block)
            if level is None:
                outline.paragraph(block.text)
            else:
                outline.heading(level, block.text)
    except ReadError:
        raise
    except Exception as exc:  # python-docx and lxml raise many kinds on damaged parts; none may escape
        raise ReadError(f"damaged DOCX ({short(exc)})") from None
    pages = outline.finish()
    if not pages:
        raise ReadError("no text in the DOCX (only images, or empty?)")
    yield from pages


def _heading_level(paragraph: Any) -> int | None:
    style = paragraph.style
    if style is None:
        return None
    for name in (style.name or "", style.style_id or ""):
        if name.lower() == "title":
            return 0
        match = _HEADING.match(name)
        if match:
            return int(match.group(1))
    return None


def _rows(table: Any) -> Iterator[str]:
    """Each row as one paragraph, cells joined by " | " (a merged cell once, though python-docx repeats it)."""
    for row in table.rows:
        cells: list[Any] = []
        for cell in row.cells:
            if not cells or cell is not cells[-1]:  # a merged cell comes as one object repeated
                cells.append(cell)
        yield " | ".join(" ".join(cell.text.split()) for cell in cells if cell.text.strip())
