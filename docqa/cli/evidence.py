"""The evidence in a cited passage: the stretch of it around the words that support the answer.

A citation that shows only a passage's first 200 characters often stops before the sentence the answer
came from. `evidence_excerpt` finds the window of the passage that shares the most words with the answer
(rare, longer words count more than "the"), widens it to word boundaries and marks cuts with "…".
"""

from __future__ import annotations

import math
import re

_WORD = re.compile(r"\w+", re.UNICODE)
# Words so common that sharing them says nothing about where the answer came from.
_STOP = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was were
with which who what when where why how not no but than then so do does did can could would should will""".split())


def _words(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(text)]


def evidence_excerpt(passage: str, answer: str, width: int = 300) -> str:
    """About `width` characters of `passage` (whitespace collapsed) around the words it shares with `answer`;
    the passage's start when it shares none. "…" marks each end that was cut."""
    text = " ".join(passage.split())
    if len(text) <= width:
        return text
    wanted = {w for _, _, w in _words(answer) if w not in _STOP and (len(w) > 2 or w.isdigit())}
    words = _words(text)
    best_score, span = 0.0, (0, 0)
    # Slide a window of `width` characters over word starts; each answer word counts once per window (one
    # word repeated should not outweigh several different ones).
    for first in range(len(words)):
        start = words[first][0]
        score, counted, found, last = 0.0, set(), None, start
        for begin, end, word in words[first:]:
            if end - start > width:
                break
            if word in wanted and word not in counted:
                counted.add(word)
                score += math.log(1 + len(word))
                found = begin if found is None else found
                last = end
        if score > best_score:
            best_score, span = score, (found if found is not None else start, last)
    if best_score == 0:
        begin = 0
    else:
        # Centre the matched words, then start at the beginning of their sentence if that keeps them all.
        begin = max(0, span[0] - (width - (span[1] - span[0])) // 2)
        sentence = text.rfind(". ", begin, span[0])
        begin = sentence + 2 if sentence >= 0 else begin
        if begin > 0 and not text[begin - 1].isspace():
            space = text.find(" ", begin, span[0])
            begin = space + 1 if space >= 0 else begin
    end = min(len(text), begin + width)
    if end < len(text):
        space = text.rfind(" ", begin, end)
        end = space if space > begin else end
    return f"{'…' if begin > 0 else ''}{text[begin:end].strip()}{'…' if end < len(text) else ''}"
