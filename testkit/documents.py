"""Writers for real test documents: good, hostile and odd PDFs and text files.

Each function writes one file to the given path (creating parent directories) and returns it as a
Path. No pytest here, so scripts and other test helpers can import it too. Output is deterministic:
the same call writes the same file content (PDF creation dates are pinned). The one exception,
`pdf_from_objects`, returns the bytes of a hand-written PDF (testkit/hostile.py builds on it too).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from datetime import UTC, datetime
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from pypdf import PdfReader, PdfWriter

NQ_DATA = Path(__file__).parent.parent / "data" / "nq_open" / "nq-open-oracle.jsonl.gz"

# Pinned so two runs write byte-identical files (fpdf2 otherwise stamps the current time).
_CREATION_DATE = datetime(2024, 1, 1, tzinfo=UTC)

# Typographic characters common in Wikipedia text that latin-1 lacks; ASCII look-alikes keep the
# words readable (and searchable) instead of turning them into "?".
_ASCII_LOOKALIKES = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-")
    | dict.fromkeys("\u2018\u2019\u201a\u2032", "'")
    | dict.fromkeys("\u201c\u201d\u201e\u2033", '"')
    | dict.fromkeys("\u2002\u2003\u2009\u200a\u202f", " ")
    | dict.fromkeys("\u200b\ufeff", "")
    | {"\u2026": "...", "\u2022": "*"}
)


def pdf_safe_text(text: str) -> str:
    """The text as write_multipage_pdf puts it on the page (core fonts only know latin-1).

    Dashes, curly quotes and odd spaces become ASCII look-alikes; any other non-latin-1 character
    becomes "?". Tests comparing extracted text with the input should compare against this.
    """
    text = text.translate(_ASCII_LOOKALIKES)
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _new_pdf(font_size: float = 11) -> FPDF:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(_CREATION_DATE)
    pdf.set_margins(15, 15, 15)
    pdf.set_font("Helvetica", size=font_size)
    return pdf


def _prepare(path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _pdf_bytes(pages: list[str]) -> bytes:
    """One PDF page per string; raises ValueError if a string does not fit on one page."""
    pdf = _new_pdf()
    # Keep auto page breaks on so an overflow is detected (page count grows) rather than drawn
    # off the bottom of the page, where pypdf would still extract it and hide the mistake.
    pdf.set_auto_page_break(True, margin=15)
    for number, text in enumerate(pages, start=1):
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 5, pdf_safe_text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if pdf.page != number:
            raise ValueError(f"page {number} text ({len(text)} chars) does not fit on one page; split it")
    return bytes(pdf.output())


def write_multipage_pdf(path: Path | str, pages: list[str]) -> Path:
    """A real PDF with one page per string, Helvetica 11 pt, extractable by pypdf.

    Long texts wrap with multi_cell; a text that overflows one A4 page (about 4,500 chars)
    raises ValueError so page numbers always match list positions (page i+1 = pages[i]).
    Non-latin-1 characters are replaced: see pdf_safe_text. An empty string gives a blank page.
    """
    path = _prepare(path)
    path.write_bytes(_pdf_bytes(pages))
    return path


def write_encrypted_pdf(path: Path | str, text: str, user_password: str = "secret") -> Path:
    """A one-page PDF encrypted with pypdf's default (RC4-128): unreadable without user_password.

    RC4 rather than AES because pypdf needs the optional `cryptography` package for AES, which
    the test environment need not have.
    """
    path = _prepare(path)
    writer = PdfWriter(clone_from=PdfReader(BytesIO(_pdf_bytes([text]))))
    writer.encrypt(user_password=user_password, owner_password=user_password + "-owner")
    with path.open("wb") as f:
        writer.write(f)
    return path


def write_truncated_pdf(path: Path | str) -> Path:
    """A valid three-page PDF cut in half: no xref, trailer or catalog survive."""
    path = _prepare(path)
    data = _pdf_bytes([f"Page {i} of a document that was cut short." for i in (1, 2, 3)])
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt_pdf(path: Path | str) -> Path:
    """A `%PDF-1.4` header followed by random bytes: looks like a PDF, is not one."""
    path = _prepare(path)
    path.write_bytes(b"%PDF-1.4\n" + random.Random(1).randbytes(2048))
    return path


def write_image_only_pdf(path: Path | str) -> Path:
    """A one-page PDF with a filled rectangle and a grey bitmap but no text, like a scan.

    pypdf extracts "" from its page.
    """
    from PIL import Image  # fpdf2 depends on Pillow, so it is always installed alongside

    path = _prepare(path)
    pdf = _new_pdf()
    pdf.add_page()
    pdf.set_fill_color(200, 200, 200)
    pdf.rect(20, 20, 170, 60, style="DF")
    # A noisy bitmap so the page carries a real image XObject, as a scanned page would.
    rng = random.Random(2)
    image = Image.frombytes("L", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64)))
    pdf.image(image, x=20, y=100, w=100)
    path.write_bytes(bytes(pdf.output()))
    return path


def write_broken_xref_pdf(path: Path | str, text: str = "Text behind a broken xref table.") -> Path:
    """A valid PDF whose classic xref table offsets are all wrong (shifted by 7 bytes).

    Readers must rebuild the cross-reference by scanning the file; pypdf does (see tests).
    """
    path = _prepare(path)
    data = _pdf_bytes([text])
    start = data.rindex(b"\nxref\n") + len(b"\nxref\n")
    end = data.index(b"trailer", start)

    def shift(match: re.Match[bytes]) -> bytes:
        offset = int(match.group(1))
        # Offset 0 is the free-list head; leave it so only object offsets are wrong.
        return b"%010d" % (offset + 7 if offset else 0) + match.group(2)

    table = re.sub(rb"(\d{10})( \d{5} [nf])", shift, data[start:end])
    assert table != data[start:end], "fpdf2 output had no classic xref table to scramble"
    path.write_bytes(data[:start] + table + data[end:])
    return path


def pdf_from_objects(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF file of these objects (object n is objects[n-1]) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref_at)
    return bytes(out)


def write_cyclic_pages_pdf(path: Path | str) -> Path:
    """A hand-written PDF whose page tree loops: an intermediate /Pages node lists its own parent
    (the root /Pages) among its /Kids, next to one real page saying "Hello cycle".

    Byte offsets in the xref are correct, so the only defect is the cycle.
    """
    path = _prepare(path)
    content = b"BT /F1 12 Tf 72 720 Td (Hello cycle) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        # Object 3 is a child of 2 and also names 2 as a kid: the cycle.
        b"<< /Type /Pages /Parent 2 0 R /Kids [4 0 R 2 0 R] /Count 1 >>",
        (
            b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] /Contents 5 0 R"
            b" /Resources << /Font << /F1 6 0 R >> >> >>"
        ),
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    path.write_bytes(pdf_from_objects(objects))
    return path


def write_empty_file(path: Path | str) -> Path:
    """A 0-byte file (give it any suffix: .pdf, .txt, .md)."""
    path = _prepare(path)
    path.write_bytes(b"")
    return path


def write_binary_txt(path: Path | str, size: int = 4096) -> Path:
    """Random bytes, NULs guaranteed, under whatever name is given (meant for a .txt name)."""
    path = _prepare(path)
    data = bytearray(random.Random(3).randbytes(size))
    data[:4] = b"\x00\x01\x00\xff"  # NULs at the start whatever the seed produces
    path.write_bytes(bytes(data))
    return path


LATIN1_TEXT = "Café au lait, naïve façade, Müller über alles: déjà vu.\n"


def write_latin1_txt(path: Path | str) -> Path:
    """LATIN1_TEXT (é, ï, ç, ü) encoded as latin-1: valid Windows-1252, invalid UTF-8."""
    path = _prepare(path)
    path.write_bytes(LATIN1_TEXT.encode("latin-1"))
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Text as UTF-8, newlines written as given (no platform translation)."""
    path = _prepare(path)
    path.write_bytes(text.encode("utf-8"))
    return path


@lru_cache(maxsize=1)
def _nq_passages() -> tuple[tuple[str, str], ...]:
    """(title, text) of every distinct NQ gold passage, in file order, whitespace normalised."""
    seen: set[str] = set()
    passages: list[tuple[str, str]] = []
    with gzip.open(NQ_DATA, "rt", encoding="utf-8") as f:
        for line in f:
            ctxs = json.loads(line).get("ctxs") or []
            if not ctxs:
                continue
            text = " ".join(ctxs[0]["text"].split())
            # Several questions share a gold passage; duplicates would skew dedup/search tests.
            if text and text not in seen:
                seen.add(text)
                passages.append((" ".join(ctxs[0]["title"].split()), text))
    return tuple(passages)


def real_text_paragraphs(n: int) -> list[str]:
    """The first n distinct Wikipedia passages (about 80 words each; a few are one short
    sentence) of the NQ-open oracle file.

    Always the same passages in the same order. Raises ValueError if n exceeds the 2,588
    available. Texts may contain non-latin-1 characters; see pdf_safe_text for PDFs.
    """
    passages = _nq_passages()
    if not 0 <= n <= len(passages):
        raise ValueError(f"n must be between 0 and {len(passages)}, got {n}")
    return [text for _, text in passages[:n]]


def real_titled_paragraphs(n: int) -> list[tuple[str, str]]:
    """Like real_text_paragraphs but (title, text) pairs; the title is the Wikipedia article's."""
    passages = _nq_passages()
    if not 0 <= n <= len(passages):
        raise ValueError(f"n must be between 0 and {len(passages)}, got {n}")
    return list(passages[:n])
