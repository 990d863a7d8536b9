"""Write a long, real-text PDF for ingestion benchmarks.

    python benchmarks/make_long_pdf.py OUT.pdf --pages 300

Text is the NQ-open gold Wikipedia passages in data/nq_open (title as a bold heading, then the
passage), flowing across A4 pages at about 420 words a page. The 2,588 distinct passages fill
about 500 pages; longer documents reuse them, marking the heading "(copy 2)" and so on, so
retrieval benchmarks can tell repeats apart. Output is deterministic for a given --pages.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos

# Duplicated from testkit/documents.py on purpose: benchmarks must not import tests.
NQ_DATA = Path(__file__).resolve().parent.parent / "data" / "nq_open" / "nq-open-oracle.jsonl.gz"

# Core fonts only know latin-1; map the common Wikipedia typography to ASCII so words stay intact.
_ASCII = str.maketrans(
    dict.fromkeys("\u2013\u2014\u2212", "-")
    | dict.fromkeys("\u2018\u2019", "'")
    | dict.fromkeys("\u201c\u201d", '"')
    | {"\u2026": "...", "\u2009": " ", "\u200b": ""}
)

# 12 pt on A4 with 25 mm margins gives ~75 chars x 41 lines: about 400 words a page.
BODY_PT, HEADING_PT, LINE_MM, MARGIN_MM = 12.0, 12.5, 6.0, 25.0


def nq_passages() -> list[tuple[str, str]]:
    """Distinct (title, text) gold passages in file order, whitespace normalised."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    with gzip.open(NQ_DATA, "rt", encoding="utf-8") as f:
        for line in f:
            ctxs = json.loads(line).get("ctxs") or []
            text = " ".join(ctxs[0]["text"].split()) if ctxs else ""
            if text and text not in seen:
                seen.add(text)
                out.append((" ".join(ctxs[0]["title"].split()), text))
    return out


def latin1(text: str) -> str:
    return text.translate(_ASCII).encode("latin-1", errors="replace").decode("latin-1")


def endless(passages: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for copy in count(1):
        suffix = "" if copy == 1 else f" (copy {copy})"
        for title, text in passages:
            yield title + suffix, text


def wrap(pdf: FPDF, text: str, width: float, widths: dict[str, float]) -> list[str]:
    """Greedy word wrap in the current font; `widths` caches word widths for that font.

    Done here rather than with fpdf2's multi_cell, whose line breaker re-measures the whole line
    for every character added (300 pages took ~20 s). get_string_width is itself slow (it copies
    graphics state per call), hence the cache: the corpus has far fewer distinct words than words.
    A word wider than the line (rare; long URLs) gets a line of its own and overruns the margin.
    """
    for word in (" ", *text.split(" ")):
        if word not in widths:
            widths[word] = pdf.get_string_width(word)
    space = widths[" "]
    lines: list[str] = []
    line: list[str] = []
    used = 0.0
    for word in text.split(" "):
        w = widths[word]
        if line and used + space + w > width:
            lines.append(" ".join(line))
            line, used = [], 0.0
        used += (space if line else 0.0) + w
        line.append(word)
    if line:
        lines.append(" ".join(line))
    return lines


def make_pdf(out: Path, pages: int) -> tuple[int, int, int]:
    """Write exactly `pages` pages to `out`; returns (pages, bytes, passages written)."""
    pdf = FPDF(format="A4")
    pdf.set_creation_date(datetime(2024, 1, 1, tzinfo=UTC))  # reproducible bytes
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(True, margin=MARGIN_MM)
    pdf.set_title("docqa benchmark: NQ-open Wikipedia passages")
    pdf.add_page()
    width = pdf.epw
    bottom = pdf.h - MARGIN_MM
    written = 0
    heading_widths: dict[str, float] = {}
    body_widths: dict[str, float] = {}
    for title, text in endless(nq_passages()):
        pdf.set_font("Helvetica", style="B", size=HEADING_PT)
        heading = wrap(pdf, latin1(title), width, heading_widths)
        pdf.set_font("Helvetica", size=BODY_PT)
        body = wrap(pdf, latin1(text), width, body_widths)
        if pdf.page == pages:
            # Last page: only whole passages, so the document never grows past `pages`.
            if pdf.get_y() + LINE_MM * (len(heading) + len(body) + 1) > bottom:
                break
        elif pdf.get_y() + LINE_MM * (len(heading) + 2) > bottom:
            pdf.add_page()  # don't strand a heading at the foot of a page
        # Cells, not multi_cell (see wrap); auto page break still moves lines to the next page.
        pdf.set_font("Helvetica", style="B", size=HEADING_PT)
        for line in heading:
            pdf.cell(width, LINE_MM, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("Helvetica", size=BODY_PT)
        for line in body:
            pdf.cell(width, LINE_MM, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(LINE_MM * 0.6)
        written += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(out))
    return pdf.page, out.stat().st_size, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PDF file to write")
    parser.add_argument("--pages", type=int, default=300, help="number of pages (default 300)")
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    started = time.perf_counter()
    pages, size, passages = make_pdf(args.out, args.pages)
    seconds = time.perf_counter() - started
    print(f"wrote {args.out}: {pages} pages, {size:,} bytes, {passages} passages, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
