"""Pages -> chunks sized in the embedding model's own tokens, with overlap and page spans.

Chunks are cut only where a new word starts, so the chunk text re-tokenizes to the same tokens and the
embedding model sees all of it: no chunk exceeds the model's maximum sequence length.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from docqa.readers import Page


# Python strings may hold unpaired UTF-16 surrogates (a PDF's broken ToUnicode map, an LLM's JSON
# "\\ud800" escape); the tokenizer and the UTF-8 stores reject them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Chunk:
    index: int  # 0-based position in its document
    text: str
    page_start: int  # 1-based
    page_end: int
    tokens: int

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
    """
    texts: dict[int, str] = {}
    window: list[_Token] = []
    emitted = 0  # window[:emitted] already went out in the previous chunk (the overlap)
    index = 0
    for page in pages:
        text = _LONE_SURROGATE.sub("\ufffd", page.text)  # one for one, so token offsets still index it
        tokens = _tokenize(tokenizer, Page(page.number, text))
        if not tokens:
            continue
        texts[page.number] = text
        # Feed the window a chunk's worth at a time: cutting chunks off the front of a whole page's tokens
        # copied the rest each time, quadratic in the page (a 5 MB single-line file took minutes).
        for start in range(0, len(tokens), chunk_tokens):
            window.extend(tokens[start : start + chunk_tokens])
            while len(window) > chunk_tokens:
                cut = _cut_point(window, chunk_tokens)
                yield _make_chunk(index, window[:cut], texts)
                index += 1
                restart = _restart_point(window, cut, overlap)
                window = window[restart:]
                emitted = cut - restart
                _forget_pages(texts, window)
    if len(window) > emitted:
        yield _make_chunk(index, window, texts)


def _tokenize(tokenizer: Any, page: Page) -> list[_Token]:
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
            tokens.append(_Token(page.number, base + start, base + end, word != previous_word, start > previous_end))
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


def _cut_point(window: list[_Token], limit: int) -> int:
    """The largest i <= limit where window[i] starts a word (so window[:i] ends on a whole word).

    Prefers a break at whitespace within the last quarter of the chunk, then any word boundary.
    """
    for i in range(limit, max(0, limit - limit // 4), -1):
        if window[i].after_space:
            return i
    for i in range(limit, 0, -1):
        if window[i].word_start:
            return i
    return limit  # one "word" longer than a chunk: cut inside it rather than overflow


def _restart_point(window: list[_Token], cut: int, overlap: int) -> int:
    candidates = range(max(1, cut - overlap), cut)
    for attribute in ("after_space", "word_start"):
        for i in candidates:
            if getattr(window[i], attribute):
                return i
    return cut


def _forget_pages(texts: dict[int, str], window: list[_Token]) -> None:
    first = window[0].page if window else None
    for number in [n for n in texts if first is None or n < first]:
        del texts[number]


def _make_chunk(index: int, tokens: list[_Token], texts: dict[int, str]) -> Chunk:
    parts: list[str] = []
    run_start = 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or tokens[i].page != tokens[run_start].page:
            page = tokens[run_start].page
            parts.append(texts[page][tokens[run_start].start : tokens[i - 1].end])
            run_start = i
    return Chunk(index, "\n".join(parts), tokens[0].page, tokens[-1].page, len(tokens))
