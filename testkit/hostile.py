"""Hostile inputs for the readers and the chunker: hypothesis strategies and deterministic writers.

No pytest here, so the benchmark (benchmarks/hostile_input.py) draws from the same inputs as the tests
(tests/test_hostile_input.py). `read_and_chunk` runs a file through the first half of the pipeline the way
`docqa ingest` does (read_pages -> chunk_pages under --file-timeout) and `check_outcome` states what a user
may expect of the result: chunks that fit the model and are valid UTF-8, or a one-line error, or a
timeout; never any other exception.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from docqa.chunking import CHARS_PER_TOKEN, Chunk, chunk_pages
from docqa.ingest.files import FileTimeout, time_limited
from docqa.readers import ReadError, read_pages
from testkit.documents import (
    pdf_from_objects,
    real_text_paragraphs,
    write_binary_txt,
    write_broken_xref_pdf,
    write_corrupt_pdf,
    write_cyclic_pages_pdf,
    write_multipage_pdf,
    write_text,
    write_truncated_pdf,
)

CHUNK_TOKENS = 200
OVERLAP = 40

# Characters that break naive text handling: NUL and other controls, lone UTF-16 surrogates, bidi
# controls and right-to-left scripts, zero-width and joiner characters, BOM, line/paragraph separators,
# combining marks, astral-plane emoji, the replacement character, form feed (docqa's page break).
NASTY = ["\x00", "\x01", "\x1b", "\x7f", "\ud800", "\udbff", "\udc00", "\udfff", "\u202e", "\u202d", "\u2067",
         "\u200f", "\u200e", "\u061c", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u2028", "\u2029",
         "\u0301", "\u0336", "\U0001f600", "\U0001f469\u200d\U0001f4bb", "\ufffd", "\f", "\r", "\r\n", "\t",
         "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627", "\u4e2d\u6587", "\U000e0041", "\uffff"]

hostile_text = st.lists(
    st.one_of(st.sampled_from(NASTY), st.text(max_size=20), st.sampled_from(["word", " ", "\n", "Hello world. "])),
    max_size=200,
).map("".join)

random_bytes = st.binary(max_size=20_000)


@st.composite
def nested_markdown(draw: Any) -> str:
    """Markdown nested absurdly deep: quotes, lists, brackets, emphasis, code fences, HTML."""
    depth = draw(st.integers(min_value=1, max_value=20_000))
    kind = draw(st.sampled_from(["quote", "list", "brackets", "emphasis", "fences", "html", "mixed"]))
    word = draw(st.sampled_from(["deep", "x", "\u202edeep", ""]))
    if kind == "quote":
        return "> " * depth + word
    if kind == "list":
        return "\n".join("  " * i + "- " + word for i in range(min(depth, 3000)))
    if kind == "brackets":
        return "[" * depth + word + "](" * depth + ")" * depth
    if kind == "emphasis":
        return "*_" * depth + word + "_*" * depth
    if kind == "fences":
        return ("```\n" * depth) + word
    if kind == "html":
        return "<div>" * depth + word + "</div>" * depth
    return "".join(draw(st.sampled_from(["> ", "- ", "[", "*", "`", "<b>", "#"])) for _ in range(min(depth, 2000)))


def huge_line(size: int, words: bool) -> str:
    """One line of `size` characters: real words separated by spaces, or no whitespace at all."""
    if not words:
        return ("Zyx0" * (size // 4 + 1))[:size]
    text = " ".join(real_text_paragraphs(300)).replace("\n", " ")
    return ((text + " ") * (size // len(text) + 1))[:size]


@st.composite
def mutated_pdf(draw: Any) -> bytes:
    """A real one-page PDF with random damage: bytes flipped, cut short, junk inserted, xref scrambled."""
    data = bytearray(_base_pdf())
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "xref", "delete"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif how == "cut":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif how == "delete":
            del data[at:at + draw(st.integers(min_value=1, max_value=200))]
        else:
            start = data.rfind(b"xref")
            if start >= 0:
                rng = random.Random(draw(st.integers(min_value=0, max_value=1 << 30)))
                table = bytearray(data[start:start + 400])
                digits = [i for i, b in enumerate(table) if 48 <= b <= 57]
                for i in rng.sample(digits, min(len(digits), 12)):
                    table[i] = rng.randrange(48, 58)
                data[start:start + 400] = table
    return bytes(data)


_BASE_PDF: bytes | None = None


def _base_pdf() -> bytes:
    global _BASE_PDF
    if _BASE_PDF is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _BASE_PDF = write_multipage_pdf(Path(tmp) / "base.pdf", real_text_paragraphs(2)).read_bytes()
    return _BASE_PDF


# -- hand-written hostile PDFs ----------------------------------------------------------------------
def _stream(content: bytes, compress: bool = False) -> bytes:
    if compress:
        content = zlib.compress(content)
        return b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream"
    return b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"


def one_page_pdf(content: bytes, font: bytes = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
                 extra: list[bytes] | None = None) -> bytes:
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(content),
        font,
        *(extra or []),
    ])


def tounicode_pdf(text: str) -> bytes:
    """A PDF whose font's ToUnicode map makes pypdf extract exactly `text` (up to 200 characters),
    surrogates, NULs and bidi controls included: what a hostile or broken PDF can hand the chunker."""
    chars = list(text[:200]) or [" "]
    entries = b"".join(b"<%02X> <%s>\n" % (i, "".join(f"{u:04X}" for u in _utf16_units(ch)).encode())
                       for i, ch in enumerate(chars, start=1))
    cmap = (b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Hostile def /CMapType 2 def\n"
            b"1 begincodespacerange <00> <FF> endcodespacerange\n%d beginbfchar\n" % len(chars)
            + entries + b"endbfchar endcmap CMapName currentdict /CMap defineresource pop end end")
    shown = "".join(f"{i:02X}" for i in range(1, len(chars) + 1)).encode()
    content = b"BT /F1 12 Tf 72 720 Td <" + shown + b"> Tj ET"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>"
    return one_page_pdf(content, font, [_stream(cmap)])


def _utf16_units(ch: str) -> list[int]:
    if 0xD800 <= ord(ch) <= 0xDFFF:
        return [ord(ch)]  # a lone surrogate, as a broken ToUnicode map would say it
    data = ch.encode("utf-16-be")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def nested_array_pdf(depth: int) -> bytes:
    """A page whose resources hold an array nested `depth` deep (parsers that recurse blow the stack)."""
    deep = b"[" * depth + b"1" + b"]" * depth
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Deep " + deep
        + b" /Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(b"BT /F1 12 Tf 72 720 Td (Deep array page) Tj ET"),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])


def reference_loop_pdf() -> bytes:
    """Objects that are references to each other (4 -> 6 -> 4) where the page's contents should be."""
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"6 0 R",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"4 0 R",
    ])


def many_pages_claimed_pdf() -> bytes:
    """A page tree that claims a billion pages but has one."""
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1000000000 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(b"BT /F1 12 Tf 72 720 Td (Only page) Tj ET"),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])


def decompression_bomb_pdf(megabytes: int = 64) -> bytes:
    """A page whose content stream inflates from a few KB to `megabytes` MB of text-showing operators."""
    line = b"BT /F1 12 Tf 72 720 Td (bomb bomb bomb bomb bomb bomb bomb bomb) Tj ET\n"
    content = line * (megabytes * (1 << 20) // len(line))
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(content, compress=True),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])


# -- running and judging ----------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # "ok" (chunks), "error" (a ReadError, or no text), "timeout" (--file-timeout)
    message: str = ""
    chunks: list[Chunk] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def read_and_chunk(path: Path, tokenizer: Any, seconds: float = 60.0) -> Outcome:
    """Read and chunk one file as `docqa ingest` does, under a --file-timeout of `seconds`.

    Any exception other than ReadError escapes: that is the bug the tests look for.
    """
    notices: list[str] = []
    try:
        pages = read_pages(path, notices)
        chunks = list(time_limited(chunk_pages(pages, tokenizer, CHUNK_TOKENS, OVERLAP), seconds))
    except ReadError as exc:
        return Outcome("error", str(exc), notices=notices)
    except FileTimeout:
        return Outcome("timeout", f"took longer than {seconds:g} s", notices=notices)
    if not chunks:
        return Outcome("error", "no text to index", notices=notices)
    return Outcome("ok", chunks=chunks, notices=notices)


def check_outcome(outcome: Outcome) -> None:
    """What a user may expect: usable chunks, or one clear line saying why not."""
    if outcome.kind == "ok":
        for n, chunk in enumerate(outcome.chunks):
            assert chunk.index == n
            assert 0 < chunk.tokens <= CHUNK_TOKENS
            assert len(chunk.text) <= CHUNK_TOKENS * CHARS_PER_TOKEN, "a chunk too long for a search page"
            assert 1 <= chunk.page_start <= chunk.page_end
            assert chunk.text.strip(), "an empty chunk"
            chunk.text.encode("utf-8")  # no lone surrogates: the stores and the tokenizer take UTF-8 only
    else:
        message = outcome.message
        assert message and "\n" not in message and len(message) <= 400, repr(message)
        assert "Traceback" not in message
    for notice in outcome.notices:
        assert notice and "\n" not in notice


def write_hostile_directory(directory: Path, rng: random.Random) -> dict[str, str]:
    """One file of each hostile kind plus one good file; returns {file name: kind}."""
    # (NULs early in a file make it "binary"; nul-after-8k.txt has one later on)
    nasty = "".join(rng.choice(["\ud800", "\u202e", "\u200b", "\ufeff", "\u05e9\u05dc", " x "]) for _ in range(400))
    files = {
        "random.txt": rng.randbytes(5000),
        "random.pdf": rng.randbytes(5000),
        "nul-after-8k.txt": (" ".join(real_text_paragraphs(30)) + "\x00 tail").encode(),
        "surrogates.md": ("Intro words here. " + nasty).encode("utf-8", "surrogatepass"),
        "utf16.txt": ("UTF-16 text with words. " * 40).encode("utf-16"),
        "nested.md": ("> " * 3000 + "deep quote").encode(),
        "brackets.md": ("[" * 3000 + "x").encode(),
        "tounicode.pdf": tounicode_pdf("Readable words \x00\ud800\u202e and more words"),
        "nested-arrays.pdf": nested_array_pdf(50_000),
        "reference-loop.pdf": reference_loop_pdf(),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    write_broken_xref_pdf(directory / "broken-xref.pdf", "Words behind a scrambled cross-reference table.")
    write_cyclic_pages_pdf(directory / "cyclic.pdf")
    write_truncated_pdf(directory / "truncated.pdf")
    write_corrupt_pdf(directory / "corrupt.pdf")
    write_binary_txt(directory / "binary.txt")
    write_text(directory / "good.txt", "\n\n".join(real_text_paragraphs(3)) + "\nThe code word is zqxgoodfile.")
    return {p.name: p.suffix for p in directory.iterdir()}
