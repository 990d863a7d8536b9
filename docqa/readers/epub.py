"""EPUB books with the standard library: the zip's OPF manifest and spine give the chapters in reading order,
and each chapter's XHTML goes through the HTML reader. DRM-protected books are refused in one line."""

from __future__ import annotations

import posixpath
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

from docqa.readers.base import Outline, Page, ReadError, decode_text, open_zip, read_member, short
from docqa.readers.html import parse_html

SUFFIXES = (".epub",)

_CHAPTER_TYPES = ("application/xhtml+xml", "text/html")
# Algorithms that only obfuscate embedded fonts: such a book's text is in the clear.
_FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")
# Files that DRM schemes (Adobe ADEPT, Apple FairPlay, Readium LCP) add to the book.
_DRM_FILES = ("META-INF/rights.xml", "META-INF/sinf.xml", "META-INF/license.lcpl")


def read_epub(path: Path, notices: list[str]) -> Iterator[Page]:
    outline = Outline()
    with open_zip(path, "EPUB") as archive:
        names = set(archive.namelist())
        _refuse_drm(archive, names)
        opf_path = _package_path(archive, names)
        chapters, missing = _spine(_xml(read_member(archive, opf_path, "EPUB"), opf_path), opf_path, names)
        if missing:
            notices.append(f"{len(missing)} chapter(s) listed in the book's spine are missing, e.g. {missing[0]}; "
                           "read the rest")
        decoding: list[str] = []
        for name in chapters:
            outline.new_part()
            parse_html(decode_text(read_member(archive, name, "EPUB"), decoding, markup=True), outline)
        if decoding:  # one notice per book, not one per chapter
            notices.append(f"{decoding[0]} (in {len(decoding)} chapter(s))")
    pages = outline.finish()
    if not pages:
        raise ReadError("no text in the EPUB (a book of images only, or no chapters in its spine?)")
    yield from pages


def _refuse_drm(archive: zipfile.ZipFile, names: set[str]) -> None:
    drm = [name for name in _DRM_FILES if name in names]
    if "META-INF/encryption.xml" in names:
        root = _xml(read_member(archive, "META-INF/encryption.xml", "EPUB"), "META-INF/encryption.xml")
        methods = {element.get("Algorithm", "") for element in root.iter() if _local(element.tag) ==
                   "EncryptionMethod"}
        if methods - set(_FONT_OBFUSCATION):
            drm.append("META-INF/encryption.xml")
    if drm:
        raise ReadError(f"encrypted EPUB (DRM, {drm[0]}): docqa reads only DRM-free books")


def _package_path(archive: zipfile.ZipFile, names: set[str]) -> str:
    """The OPF package document's name: META-INF/container.xml says, or else the book's only .opf."""
    if "META-INF/container.xml" in names:
        root = _xml(read_member(archive, "META-INF/container.xml", "EPUB"), "META-INF/container.xml")
        for element in root.iter():
            if _local(element.tag) == "rootfile" and element.get("full-path"):
                return element.get("full-path", "")
    packages = sorted(name for name in names if name.lower().endswith(".opf"))
    if len(packages) != 1:
        raise ReadError("damaged EPUB: no META-INF/container.xml naming its package (.opf) document")
    return packages[0]


def _spine(opf: ElementTree.Element, opf_path: str, names: set[str]) -> tuple[list[str], list[str]]:
    """(the zip names of the chapters in reading order, the spine's names missing from the zip)."""
    base = posixpath.dirname(opf_path)
    manifest: dict[str, tuple[str, str, str]] = {}
    for item in opf.iter():
        if _local(item.tag) == "item" and item.get("id") and item.get("href"):
            name = posixpath.normpath(posixpath.join(base, unquote(item.get("href", "").split("#")[0])))
            manifest[item.get("id", "")] = (name, item.get("media-type", ""), item.get("properties", ""))
    chapters: list[str] = []
    missing: list[str] = []
    for itemref in opf.iter():
        if _local(itemref.tag) != "itemref" or itemref.get("idref") not in manifest:
            continue
        name, media_type, properties = manifest[itemref.get("idref", "")]
        if media_type not in _CHAPTER_TYPES or "nav" in properties.split() or name in chapters:
            continue  # the table of contents is navigation, not the book's text
        (chapters if name in names else missing).append(name)
    return chapters, missing


def _xml(data: bytes, name: str) -> ElementTree.Element:
    # expat (2.4.1 and later, in every supported Python) limits entity expansion, so a "billion laughs"
    # file fails to parse instead of exhausting memory.
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise ReadError(f"damaged EPUB: {name} is not well-formed XML ({short(exc)})") from None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""
