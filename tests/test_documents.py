"""The document fixtures are what they claim, and pypdf 7 reacts to the bad ones as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader
from pypdf.errors import EmptyFileError, FileNotDecryptedError, PdfReadError

from testkit.documents import (
    LATIN1_TEXT,
    pdf_safe_text,
    real_text_paragraphs,
    real_titled_paragraphs,
    write_binary_txt,
    write_broken_xref_pdf,
    write_corrupt_pdf,
    write_cyclic_pages_pdf,
    write_empty_file,
    write_encrypted_pdf,
    write_image_only_pdf,
    write_latin1_txt,
    write_multipage_pdf,
    write_text,
    write_truncated_pdf,
)

REPO = Path(__file__).parent.parent


def squash(text: str) -> str:
    """Whitespace-insensitive form: line wrapping turns spaces into newlines."""
    return " ".join(text.split())


def test_multipage_pdf_puts_each_text_on_its_own_page(tmp_path: Path) -> None:
    paragraphs = real_text_paragraphs(8)
    pages = [
        paragraphs[0],
        " ".join(paragraphs[1:6]),  # several paragraphs: multi_cell must wrap, still one page
        "",
        "Zeta last\u2014page \u201cquoted\u201d \u0141\u00f3d\u017a caf\u00e9",
        paragraphs[7],
    ]
    reader = PdfReader(write_multipage_pdf(tmp_path / "m.pdf", pages))
    assert len(reader.pages) == len(pages)
    extracted = [squash(page.extract_text()) for page in reader.pages]
    assert extracted == [squash(pdf_safe_text(text)) for text in pages]
    # Spelled out, since the ingestion tests rely on this replacement.
    assert extracted[3] == 'Zeta last-page "quoted" ?\u00f3d? caf\u00e9'


def test_multipage_pdf_refuses_text_longer_than_a_page(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="page 2"):
        write_multipage_pdf(tmp_path / "long.pdf", ["short", " ".join(real_text_paragraphs(40))])


def test_pdfs_are_deterministic(tmp_path: Path) -> None:
    a = write_multipage_pdf(tmp_path / "a.pdf", ["same words"]).read_bytes()
    assert a == write_multipage_pdf(tmp_path / "b.pdf", ["same words"]).read_bytes()


def test_encrypted_pdf_needs_the_password(tmp_path: Path) -> None:
    path = write_encrypted_pdf(tmp_path / "e.pdf", "classified words")
    reader = PdfReader(path)  # opening works; reading does not
    assert reader.is_encrypted
    with pytest.raises(FileNotDecryptedError):
        len(reader.pages)
    assert not reader.decrypt("")  # no empty-password shortcut
    assert reader.decrypt("secret")
    assert reader.pages[0].extract_text() == "classified words"


def test_truncated_pdf_raises_on_open(tmp_path: Path) -> None:
    path = write_truncated_pdf(tmp_path / "t.pdf")
    assert path.read_bytes().startswith(b"%PDF-")
    assert b"%%EOF" not in path.read_bytes()
    # PdfStreamError ("Stream has ended unexpectedly") while looking for %%EOF; a PdfReadError.
    with pytest.raises(PdfReadError):
        PdfReader(path)


def test_corrupt_pdf_raises_on_open(tmp_path: Path) -> None:
    path = write_corrupt_pdf(tmp_path / "c.pdf")
    assert path.read_bytes().startswith(b"%PDF-1.4\n")
    with pytest.raises(PdfReadError):
        PdfReader(path)


def test_image_only_pdf_has_an_image_and_no_text(tmp_path: Path) -> None:
    reader = PdfReader(write_image_only_pdf(tmp_path / "i.pdf"))
    assert len(reader.pages) == 1
    page = reader.pages[0]
    assert page.extract_text() == ""
    assert len(page.images) == 1


def test_broken_xref_pdf_has_wrong_offsets_but_pypdf_recovers(tmp_path: Path) -> None:
    data = write_broken_xref_pdf(tmp_path / "x.pdf", "Recovered words").read_bytes()
    table = data[data.rindex(b"\nxref\n") : data.index(b"trailer")]
    offsets = [int(o) for o in re.findall(rb"(\d{10}) \d{5} n", table)]
    assert offsets and all(not data[o:].startswith(b"%d 0 obj" % n) for n, o in enumerate(offsets, 1))
    # pypdf 7 rescans the file for "N 0 obj" headers (logging warnings) and reads it normally.
    reader = PdfReader(tmp_path / "x.pdf")
    assert reader.pages[0].extract_text() == "Recovered words"


@pytest.mark.timeout(10)
def test_cyclic_pages_pdf_is_detected_not_recursed(tmp_path: Path) -> None:
    data = write_cyclic_pages_pdf(tmp_path / "y.pdf").read_bytes()
    # Hand-written bytes: every xref offset must land on its object, so the cycle is the only fault.
    table = data[data.rindex(b"\nxref\n") : data.index(b"trailer")]
    offsets = [int(o) for o in re.findall(rb"(\d{10}) 00000 n", table)]
    assert [data[o:].startswith(b"%d 0 obj" % n) for n, o in enumerate(offsets, 1)] == [True] * 6
    reader = PdfReader(tmp_path / "y.pdf")  # opening is fine; walking the page tree is not
    with pytest.raises(PdfReadError, match="cyclic"):
        len(reader.pages)


def test_empty_file(tmp_path: Path) -> None:
    path = write_empty_file(tmp_path / "z.pdf")
    assert path.stat().st_size == 0
    with pytest.raises(EmptyFileError):
        PdfReader(path)


def test_binary_txt_has_nuls_and_is_not_utf8(tmp_path: Path) -> None:
    data = write_binary_txt(tmp_path / "b.txt").read_bytes()
    assert b"\x00" in data[:8]
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")


def test_latin1_txt_is_invalid_utf8(tmp_path: Path) -> None:
    data = write_latin1_txt(tmp_path / "l.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert data.decode("latin-1") == LATIN1_TEXT


def test_write_text_is_utf8_verbatim(tmp_path: Path) -> None:
    text = "line one\r\nZ\u00fcrich \u2014 \u6771\u4eac\f page two\n"
    assert write_text(tmp_path / "sub" / "t.md", text).read_bytes() == text.encode("utf-8")


def test_real_text_paragraphs_are_distinct_english_and_stable() -> None:
    paragraphs = real_text_paragraphs(50)
    assert paragraphs == real_text_paragraphs(60)[:50]
    assert len(set(paragraphs)) == 50
    assert paragraphs[0].startswith("The first Nobel Prize in Physics")
    # A few gold passages are one short sentence (e.g. 13 words); most are ~80-word paragraphs.
    assert sum(len(p.split()) for p in paragraphs) / len(paragraphs) > 50
    assert sum(p.count(" the ") for p in paragraphs) > 100  # English prose, not tables or ids
    assert real_titled_paragraphs(1)[0] == ("List of Nobel laureates in Physics", paragraphs[0])
    with pytest.raises(ValueError):
        real_text_paragraphs(100_000)


def test_make_long_pdf_script_writes_the_pages_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "long.pdf"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "make_long_pdf.py"), str(out), "--pages", "3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "3 pages" in result.stdout
    reader = PdfReader(out)
    assert len(reader.pages) == 3
    words = [len(page.extract_text().split()) for page in reader.pages]
    assert all(300 <= w <= 550 for w in words), words
    assert "List of Nobel laureates in Physics" in reader.pages[0].extract_text()
