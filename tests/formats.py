"""Writers for real HTML, DOCX and EPUB test documents, each from one outline of headings and paragraphs.

An outline is a list of blocks: ("h1".."h6", text) for a heading, ("p", text) for a paragraph. The readers
number paragraphs (not headings) from 1 through the document, so `paragraph_number` says where a sentence is.
Boilerplate that must not be indexed carries the words in BOILERPLATE. No pytest here.
"""

from __future__ import annotations

import html
import zipfile
from pathlib import Path

Outline = list[tuple[str, str]]

# One distinct word in each kind of boilerplate; none may ever be found by search.
BOILERPLATE = {"nav": "zqnavlink", "script": "zqscriptvar", "style": "zqstylerule", "footer": "zqfootercopy",
               "aside": "zqsidebarad", "header": "zqpageheader", "toc": "zqtocentry"}


def paragraph_number(outline: Outline, sentence: str) -> int:
    """The 1-based number of the paragraph holding `sentence`, counting paragraphs only."""
    paragraphs = [text for kind, text in outline if kind == "p"]
    return next(n for n, text in enumerate(paragraphs, start=1) if sentence in text)


def _prepare(path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _body(outline: Outline) -> str:
    return "\n".join(f"<{kind}>{html.escape(text)}</{kind}>" for kind, text in outline)


def write_html_manual(path: Path | str, outline: Outline, title: str = "Manual") -> Path:
    """A saved-page style manual: the outline in <main>, wrapped in a site header with navigation, a script,
    a style sheet, a sidebar and a footer (each with its BOILERPLATE word)."""
    words = BOILERPLATE
    path = _prepare(path)
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>.{words['style']} {{ color: red; }}</style>
<script>var {words['script']} = "<p>not text</p>";</script></head>
<body>
<header><a href="/">Home</a> {words['header']}</header>
<div class="layout"><nav><ul><li><a href="#a">{words['nav']}</a></li></ul></nav>
<main>
{_body(outline)}
</main></div>
<aside><p>Buy now: {words['aside']}</p></aside>
<footer><p>&copy; 2024 {words['footer']}</p></footer>
</body></html>
""", encoding="utf-8")
    return path


def write_docx(path: Path | str, outline: Outline) -> Path:
    """A Word document written by python-docx: "h1".."h6" as Heading 1-6, paragraphs as Normal, a page header
    with the "header" BOILERPLATE word."""
    import docx

    path = _prepare(path)
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = f"Confidential {BOILERPLATE['header']}"
    for kind, text in outline:
        if kind == "p":
            document.add_paragraph(text)
        else:
            document.add_heading(text, level=int(kind[1]))
    document.save(str(path))
    return path


_CONTAINER = """<?xml version="1.0" encoding="UTF-8"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""


def _xhtml(title: str, body: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>{html.escape(title)}</title></head>
<body>{body}</body></html>"""


def epub_members(chapters: list[Outline], title: str = "A Book") -> dict[str, str]:
    """The files of an EPUB 3 book, by zip name: one XHTML chapter per outline, and a navigation document
    (with the "toc" BOILERPLATE word) that is also in the spine, as many books have it."""
    toc = "".join(f'<li><a href="chapter{n}.xhtml">{BOILERPLATE["toc"]} {n}</a></li>'
                  for n in range(1, len(chapters) + 1))
    members = {
        "mimetype": "application/epub+zip",
        "META-INF/container.xml": _CONTAINER,
        "OEBPS/nav.xhtml": _xhtml("Contents", f'<nav epub:type="toc"><ol>{toc}</ol></nav>'),
    }
    items = ['<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>']
    spine = ['<itemref idref="nav"/>']
    for n, outline in enumerate(chapters, start=1):
        members[f"OEBPS/chapter{n}.xhtml"] = _xhtml(f"Chapter {n}", _body(outline))
        items.append(f'<item id="c{n}" href="chapter{n}.xhtml" media-type="application/xhtml+xml"/>')
        spine.append(f'<itemref idref="c{n}"/>')
    members["OEBPS/content.opf"] = f"""<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
    <dc:identifier id="id">urn:uuid:00000000-0000-0000-0000-000000000000</dc:identifier>
    <dc:title>{html.escape(title)}</dc:title><dc:language>en</dc:language>
  </metadata>
  <manifest>{"".join(items)}</manifest>
  <spine>{"".join(spine)}</spine>
</package>"""
    return members


def write_epub(path: Path | str, members: dict[str, str]) -> Path:
    """An EPUB zip of these members (see epub_members): the mimetype first and stored, as the format asks."""
    path = _prepare(path)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            compression = zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED
            archive.writestr(name, text, compress_type=compression)
    return path


DRM_ENCRYPTION = """<?xml version="1.0" encoding="UTF-8"?>
<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container"
            xmlns:enc="http://www.w3.org/2001/04/xmlenc#">
  <enc:EncryptedData>
    <enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
    <enc:CipherData><enc:CipherReference URI="OEBPS/chapter1.xhtml"/></enc:CipherData>
  </enc:EncryptedData>
</encryption>"""


def write_truncated(path: Path | str, source: Path) -> Path:
    """The first half of `source`'s bytes: a download cut short."""
    path = _prepare(path)
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_ole2(path: Path | str) -> Path:
    """What Word writes for a password-protected document: an OLE2 compound file, not a zip."""
    path = _prepare(path)
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + b"EncryptedPackage" + bytes(512))
    return path
