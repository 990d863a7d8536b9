"""Pages -> chunks sized in the embedding model's own tokens, with overlap and page spans.

Chunks are cut only where a new word starts, so the chunk text re-tokenizes to the same tokens and the
embedding model sees all of it: no chunk exceeds the model's maximum sequence length. Chunks are also capped
in characters (see CHARS_PER_TOKEN): a "word" too long for that is cut into pieces, each counted as a token.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from docqa.readers import Page

# Python strings may hold unpaired UTF-16 surrogates (a PDF's broken ToUnicode map, an LLM's JSON
# "\\ud800" escape); the tokenizer and the UTF-8 stores reject them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# A chunk holds at most this many characters per token of --chunk-tokens. Real text runs 3-6 characters a
# token (Wikipedia at most 5.6, source code 4.7), but a run without whitespace longer than the tokenizer's
# word limit is one [UNK] token however long it is: without a cap 5 MB of letters became one chunk, and
# one search result filling the agent's context. Part of the store's chunking key (ArchivalStore.chunking).
CHARS_PER_TOKEN = 10


@dataclass(frozen=True)
class Chunk:
    index: int  # 0-based position in its document
    text: str
    page_start: int  # 1-based
    page_end: int
    tokens: int
    section: str = ""  # the heading path of a non-paged document's first paragraph here (see docqa.readers)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class _Token:
    page: int
    start: int  # char offsets in the page text
    end: int
    word_start: bool  # a chunk may begin here without splitting a word
    after_space: bool  # ... and it is a nice place to begin: whitespace precedes it


def check_sizes(chunk_tokens: int, overlap: int, model_limit: int) -> str | None:
    """Return why these sizes are unusable for a model that embeds at most `model_limit` tokens."""
    if chunk_tokens < 8:
        return f"--chunk-tokens must be at least 8 (got {chunk_tokens})"
    if chunk_tokens > model_limit:
        return (
            f"--chunk-tokens {chunk_tokens} exceeds the embedding model's limit of {model_limit} tokens: "
            "text past the limit would never be embedded"
        )
    if not 0 <= overlap < chunk_tokens // 2 + 1:
        return f"--overlap must be between 0 and half of --chunk-tokens (got {overlap})"
    return None


def chunk_pages(pages: Iterable[Page], tokenizer: Any, chunk_tokens: int, overlap: int) -> Iterator[Chunk]:
    """Stream chunks of at most `chunk_tokens` tokens; neighbours share about `overlap` tokens.

    Holds only the pages that the current window touches, so memory does not grow with the document.
    No chunk is longer than `chunk_tokens * CHARS_PER_TOKEN` characters; the overlap takes at most its
    share of that.
    """
    max_chars = chunk_tokens * CHARS_PER_TOKEN
    overlap_chars = max_chars * overlap // chunk_tokens
    texts: dict[int, str] = {}
    sections: dict[int, str] = {}
    window: list[_Token] = []
    emitted = 0  # window[:emitted] already went out in the previous chunk (the overlap)
    index = 0
    for page in pages:
        text = _LONE_SURROGATE.sub("\ufffd", page.text)  # one for one, so token offsets still index it
        tokens = _tokenize(tokenizer, Page(page.number, text), max(1, max_chars // 4))
        if not tokens:
            continue
        texts[page.number] = text
        sections[page.number] = page.section
        # Feed the window a chunk's worth at a time: cutting chunks off the front of a whole page's tokens
        # copied the rest each time, quadratic in the page (a 5 MB single-line file took minutes).
        for start in range(0, len(tokens), chunk_tokens):
            window.extend(tokens[start : start + chunk_tokens])
            while True:
                fit = _fit(window, min(len(window), chunk_tokens + 1), max_chars)
                if len(window) <= chunk_tokens and fit == len(window):
                    break
                cut = _cut_point(window, min(chunk_tokens, fit), emitted)
                yield _make_chunk(index, window[:cut], texts, sections)
                index += 1
                restart = _restart_point(window, cut, overlap, overlap_chars, max_chars)
                window = window[restart:]
                emitted = cut - restart
                _forget_pages(texts, window)
                _forget_pages(sections, window)
    if len(window) > emitted:
        yield _make_chunk(index, window, texts, sections)


def _tokenize(tokenizer: Any, page: Page, longest: int) -> list[_Token]:
    """The page's tokens; one spanning more than `longest` characters (an [UNK] for a huge run without
    whitespace) becomes pieces of at most `longest`, the first of them starting the word."""
    tokens = []
    for base, piece in _segments(page.text):
        encoding = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = encoding["offset_mapping"]
        word_ids = encoding.word_ids()
        previous_word = None
        previous_end = -1
        for (start, end), word in zip(offsets, word_ids, strict=True):
            if end <= start:
                continue
            if end - start <= longest:
                tokens.append(_Token(page.number, base + start, base + end, word != previous_word,
                                     start > previous_end))
            else:
                tokens.append(_Token(page.number, base + start, base + start + longest, word != previous_word,
                                     start > previous_end))
                tokens.extend(_Token(page.number, base + piece, base + min(piece + longest, end), False, False)
                              for piece in range(start + longest, end, longest))
            previous_word = word
            previous_end = end
    return tokens


_SEGMENT = 1 << 16  # characters per tokenizer call


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """(offset, piece) of `text` cut after whitespace into pieces of at most _SEGMENT characters.

    Words never span a cut, so the tokens are those of the whole text; but no single tokenizer call (which
    no signal interrupts, so --file-timeout could not stop it) grows with a hostile 5 MB line.
    """
    start = 0
    while len(text) - start > _SEGMENT:
        end = start + _SEGMENT
        cut = max(text.rfind(space, start + _SEGMENT // 2, end) for space in " \n\t")
        cut = cut + 1 if cut >= 0 else end
        yield start, text[start:cut]
        start = cut
    yield start, text[start:]


def _span(window: list[_Token], i: int, j: int) -> int:
    """The length of the chunk text that window[i:j] makes (pages joined by "\n", as _make_chunk does)."""
    if j <= i:
        return 0
    if window[i].page == window[j - 1].page:
        return window[j - 1].end - window[i].start
    length = 0
    run_start = window[i].start
    for k in range(i + 1, j):
        if window[k].page != window[k - 1].page:
            length += window[k - 1].end - run_start + 1
            run_start = window[k].start
    return length + window[j - 1].end - run_start


def _fit(window: list[_Token], upto: int, max_chars: int) -> int:
    """How many of the first `upto` tokens make a chunk text of at most `max_chars` characters."""
    if _span(window, 0, upto) <= max_chars:
        return upto
    return bisect.bisect_right(range(upto + 1), max_chars, key=lambda n: _span(window, 0, n)) - 1


def _cut_point(window: list[_Token], limit: int, emitted: int) -> int:
    """The largest i <= limit where window[i] starts a word (so window[:i] ends on a whole word).

    Prefers a break at whitespace within the last quarter of the chunk, then any word boundary; never at
    or before `emitted`, so each chunk holds something the previous one did not.
    """
    for i in range(limit, max(emitted, limit - limit // 4), -1):
        if window[i].after_space:
            return i
    for i in range(limit, emitted, -1):
        if window[i].word_start:
            return i
    return limit  # one "word" longer than a chunk: cut inside it rather than overflow


def _restart_point(window: list[_Token], cut: int, overlap: int, overlap_chars: int, max_chars: int) -> int:
    """Where the next chunk starts: up to `overlap` tokens (and `overlap_chars` characters) before `cut`,
    leaving the next chunk room for at least one new token."""
    for attribute in ("after_space", "word_start"):
        for i in range(max(1, cut - overlap), cut):
            if (getattr(window[i], attribute) and _span(window, i, cut) <= overlap_chars
                    and _span(window, i, cut + 1) <= max_chars):
                return i
    return cut


def _forget_pages(texts: dict[int, str], window: list[_Token]) -> None:
    first = window[0].page if window else None
    for number in [n for n in texts if first is None or n < first]:
        del texts[number]


def _make_chunk(index: int, tokens: list[_Token], texts: dict[int, str], sections: dict[int, str]) -> Chunk:
    parts: list[str] = []
    run_start = 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or tokens[i].page != tokens[run_start].page:
            page = tokens[run_start].page
            parts.append(texts[page][tokens[run_start].start : tokens[i - 1].end])
            run_start = i
    return Chunk(index, "\n".join(parts), tokens[0].page, tokens[-1].page, len(tokens), sections[tokens[0].page])
