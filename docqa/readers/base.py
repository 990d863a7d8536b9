"""What every reader shares: the Page it yields, ReadError, and careful decoding of bytes and zip archives."""

from __future__ import annotations

import codecs
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# A DOCX or EPUB whose members claim more than this, unpacked, is refused before anything is inflated: the
# sizes a zip declares bound what zipfile will inflate, so a zip bomb is stopped by its own table.
MAX_UNZIPPED = 1 << 30

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an old .doc, or any Office file encrypted with a password
_CHARSET = re.compile(rb"""<(?:meta[^>]*?charset|\?xml[^>]*?encoding)\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


class ReadError(Exception):
    """A file that cannot be read; str() is the reason, for a one-line message naming the file."""


@dataclass(frozen=True)
class Page:
    """A page of a paged file (PDF, text); a paragraph of a non-paged one (HTML, DOCX, EPUB).

    `number` is 1-based through the document. `section` is the heading path above a paragraph
    ("Install > Linux"), empty for paged files: see docqa.readers.location.
    """

    number: int
    text: str
    section: str = ""


@dataclass
class Outline:
    """Collects a non-paged document's headings and paragraphs into Pages: one per paragraph, numbered
    from 1 through the document, each labelled with the heading path above it.

    Headings are not counted as paragraphs (a reader counts them so); their text opens the next paragraph's
    page, so the words of a heading are still searchable next to what it heads.
    """

    fallback: str = ""  # the section of paragraphs under no heading (a page's <title>)
    pages: list[Page] = field(default_factory=list)
    _path: list[tuple[int, str]] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, text))
        self._pending.append(text)

    def paragraph(self, text: str) -> None:
        if not text.strip():
            return
        section = " > ".join(title for _, title in self._path) or self.fallback
        self.pages.append(Page(len(self.pages) + 1, "\n".join([*self._pending, text.strip()]), section))
        self._pending = []

    def new_part(self, fallback: str = "") -> None:
        """A new chapter (an EPUB's next spine document): headings above start again."""
        self._flush()
        self._path = []
        self.fallback = fallback

    def finish(self) -> list[Page]:
        self._flush()
        return self.pages

    def _flush(self) -> None:
        # Headings with no paragraph after them (an empty chapter) are still text of the document.
        if self._pending:
            text, self._pending = "\n".join(self._pending), []
            self.paragraph(text)


def read_bytes(path: Path) -> bytes:
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


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise ReadError("no such file") from None
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from None


def decode_text(data: bytes, notices: list[str], markup: bool = False) -> str:
    """Bytes of a text file as str: a UTF-16 byte order mark, else UTF-8, else Windows-1252 (with a notice).

    With `markup`, a charset that the HTML or XML declares in its first 2 kB is used instead of UTF-8.
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte order mark (Windows "Unicode" text)
        text = data.decode("utf-16", errors="replace")
        if text.count("\ufffd") > len(text) // 100:
            raise ReadError("starts like UTF-16 text but is not (or is damaged); is the extension right?")
        return text
    if _looks_binary(data):
        raise ReadError("binary content, not text (NUL or control bytes); is the extension right?")
    declared = _declared_charset(data) if markup else None
    if declared and declared not in ("utf-8", "utf-16", "utf-32"):
        return data.decode(declared, errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        notices.append(
            f"not valid UTF-8 (byte {exc.start}); decoded as Windows-1252/Latin-1, undecodable bytes replaced"
        )
        return data.decode("cp1252", errors="replace")


def _declared_charset(data: bytes) -> str | None:
    match = _CHARSET.search(data[:2048])
    if not match:
        return None
    try:
        return codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return None


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return control > len(sample) * 0.05


def open_zip(path: Path, kind: str) -> zipfile.ZipFile:
    """The zip archive a DOCX or EPUB is, or a ReadError saying why it is not a usable one."""
    if file_size(path) == 0:
        raise ReadError("empty file (0 bytes)")
    with open(path, "rb") as handle:
        if handle.read(8) == _OLE2:
            raise ReadError(f"encrypted or not a {kind}: an OLE2 file (a password-protected Office file, or an "
                            f"old .doc); remove the password or save it as {kind} again")
    try:
        archive = zipfile.ZipFile(path)
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise ReadError(f"damaged {kind}: not a readable zip archive, truncated or corrupt ({short(exc)})") from None
    if any(member.flag_bits & 0x1 for member in members):
        archive.close()
        raise ReadError(f"encrypted {kind}: its zip members need a password")
    unpacked = sum(member.file_size for member in members)
    if unpacked > MAX_UNZIPPED:
        archive.close()
        raise ReadError(f"{kind} would unpack to {unpacked >> 20} MiB, over docqa's {MAX_UNZIPPED >> 20} MiB "
                        "limit: a zip bomb?")
    return archive


def read_member(archive: zipfile.ZipFile, name: str, kind: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise ReadError(f"damaged {kind}: {name} is missing") from None
    except Exception as exc:  # zlib.error, BadZipFile (bad CRC), NotImplementedError (compression), ...
        raise ReadError(f"damaged {kind}: {name} cannot be unpacked ({short(exc)})") from None


def short(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {message[:160]}" if message else name
