"""HTML through the standard library's lenient html.parser: the text of headings and paragraphs, without the
page's boilerplate (navigation, scripts, styles, site header and footer, sidebars).

Each paragraph (a <p>, list item, table row, <pre>, ...) becomes a Page labelled with its heading path.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from docqa.readers.base import Outline, Page, ReadError, decode_text, read_bytes

SUFFIXES = (".html", ".htm", ".xhtml")

# Never the document's text. <header>/<footer> are the site's only outside <article> and <main>.
_SKIP = frozenset({"script", "style", "noscript", "template", "nav", "aside", "svg", "math", "iframe", "object",
                   "button", "select", "textarea", "head"})
_SKIP_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "complementary", "menu", "menubar"})
_BLOCKS = frozenset({"address", "article", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl",
                     "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "ol",
                     "p", "pre", "section", "summary", "table", "tbody", "thead", "tfoot", "tr", "ul", "html"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})
_BREAK = "\x00"  # a <br> inside a paragraph, until the paragraph is cleaned


def read_html(path: Path, notices: list[str]) -> Iterator[Page]:
    outline = Outline()
    parse_html(decode_text(read_bytes(path), notices, markup=True), outline)
    pages = outline.finish()
    if not pages:
        raise ReadError("no text in the HTML (after leaving out navigation, scripts and styles)")
    yield from pages


def parse_html(text: str, outline: Outline) -> None:
    """Add the headings and paragraphs of one HTML document to `outline`."""
    parser = _TextParser(outline)
    try:
        parser.feed(text)
        parser.close()
    except AssertionError as exc:  # html.parser's way of refusing some malformed declarations
        raise ReadError(f"damaged HTML ({exc})") from None
    parser.flush()


class _TextParser(HTMLParser):
    def __init__(self, outline: Outline) -> None:
        super().__init__(convert_charrefs=True)
        self.outline = outline
        self.buffer: list[str] = []
        self.title = ""
        self.skip_tag: str | None = None  # inside this element, all is boilerplate
        self.skip_depth = 0
        self.heading: int | None = None  # level of the heading being read
        self.pre = 0
        self.in_title = False
        self.content = 0  # open <article>/<main>: their <header> and <footer> are content

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":  # in <head>, which is skipped; the first is the page's fallback section
            self.in_title = not self.title
            return
        if self.skip_tag is not None:
            self.skip_depth += tag == self.skip_tag
            return
        if tag not in _VOID and self._is_boilerplate(tag, dict(attrs)):
            self.flush()
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in ("article", "main"):
            self.content += 1
        if tag == "br":
            self.buffer.append(_BREAK)
        elif tag in ("td", "th"):
            if "".join(self.buffer).strip():
                self.buffer.append(" | ")
        elif tag in _HEADINGS:
            self.flush()
            self.heading = _HEADINGS[tag]
        elif tag in _BLOCKS and self.heading is None:  # a <div> inside a heading is still the heading
            self.flush()
            self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
            if not self.outline.fallback:  # before the body's paragraphs: <title> is in <head>
                self.outline.fallback = " ".join(self.title.split())
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in ("article", "main"):
            self.content = max(0, self.content - 1)
        if tag in _HEADINGS or (tag in _BLOCKS and self.heading is None):
            self.flush()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        elif self.skip_tag is None:
            self.buffer.append(data)

    def flush(self) -> None:
        """End the paragraph (or heading) being read."""
        raw, self.buffer = "".join(self.buffer), []
        if self.pre:
            text = "\n".join(line.rstrip() for line in raw.replace(_BREAK, "\n").strip("\n").splitlines())
        else:
            text = "\n".join(" ".join(line.split()) for line in raw.split(_BREAK) if line.strip())
        if self.heading is not None:
            self.outline.heading(self.heading, text)
            self.heading = None
        else:
            self.outline.paragraph(text)

    def _is_boilerplate(self, tag: str, attrs: dict[str, str | None]) -> bool:
        if tag in _SKIP or "hidden" in attrs or attrs.get("aria-hidden") == "true":
            return True
        if tag in ("header", "footer") and not self.content:
            return True
        return (attrs.get("role") or "").lower() in _SKIP_ROLES
