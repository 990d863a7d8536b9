"""BERT's tokenizer for ASCII text in pure Python: the query path's tokenizer, ready in ~5 ms.

`tokenizers` builds a BERT tokenizer from tokenizer.json in ~25 ms, more than embedding a query takes. For
ASCII text the BERT pipeline is short and exact: drop control characters, turn whitespace into spaces,
lowercase (uncased models), split on whitespace and ASCII punctuation, then WordPiece (greedy longest match,
`##` continuations, [UNK] for a word it cannot cover) between [CLS] and [SEP]. This does exactly that, with
the vocabulary read from vocab.txt. Text with any other character (Unicode categories, accents, CJK) or with a
special token's text in it is left to `tokenizers` (encode returns None); so is any tokenizer.json that is
not this pipeline (`settings` returns None).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# BertPreTokenizer isolates each punctuation character; in ASCII that is every printable non-alphanumeric one.
_WORDS = re.compile(r"[!-/:-@\[-`{-~]|[^\s!-/:-@\[-`{-~]+")
# BertNormalizer's clean_text: remove control characters, make \t \n \r spaces.
_CLEAN = {c: None for c in [*range(32), 127] if chr(c) not in "\t\n\r"} | {ord(c): " " for c in "\t\n\r"}


def settings(source: Path) -> dict[str, Any] | None:
    """What AsciiWordPiece needs from the model's tokenizer.json, if it is BERT's pipeline over vocab.txt."""
    try:
        spec = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
        normalizer, model, post = spec["normalizer"], spec["model"], spec["post_processor"]
        words = _read_vocab(source / "vocab.txt")
        if not (normalizer["type"] == "BertNormalizer" and normalizer["clean_text"]
                and spec["pre_tokenizer"]["type"] == "BertPreTokenizer" and model["type"] == "WordPiece"
                and model["vocab"] == words and post["type"] == "TemplateProcessing"):
            return None
        single = post["single"]
        if [next(iter(part)) for part in single] != ["SpecialToken", "Sequence", "SpecialToken"] or \
                any(next(iter(part.values()))["type_id"] != 0 for part in single):
            return None
        cls, sep = (words[single[k]["SpecialToken"]["id"]] for k in (0, 2))
        return {"lowercase": bool(normalizer["lowercase"]), "unknown": words[model["unk_token"]],
                "prefix": model["continuing_subword_prefix"], "max_chars": int(model["max_input_chars_per_word"]),
                "cls": cls, "sep": sep, "specials": [t["content"] for t in spec.get("added_tokens", [])]}
    except (OSError, ValueError, KeyError, TypeError, StopIteration, AttributeError):
        return None


def _read_vocab(path: Path) -> dict[str, int]:
    words = path.read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    return dict(zip(words, range(len(words)), strict=True))


class AsciiWordPiece:
    """Token ids for ASCII texts, as the model's `tokenizers` pipeline gives them (see the module docstring)."""

    def __init__(self, vocab_file: Path, lowercase: bool, unknown: int, prefix: str, max_chars: int, cls: int,
                 sep: int, specials: list[str]) -> None:
        self._vocab = _read_vocab(vocab_file)
        self._lowercase = lowercase
        self._unknown = unknown
        self._prefix = prefix
        self._max_chars = max_chars
        self._cls, self._sep = cls, sep
        self._specials = [s.lower() for s in specials]

    def encode(self, text: str, max_length: int) -> list[int] | None:
        """[CLS] + the text's ids (cut to fit) + [SEP]; None if the text is not plain ASCII."""
        if not text.isascii():
            return None
        text = text.translate(_CLEAN)
        folded = text.lower()
        if any(special in folded for special in self._specials):
            return None
        ids: list[int] = []
        for word in _WORDS.findall(folded if self._lowercase else text):
            ids.extend(self._word(word))
            if len(ids) >= max_length - 2:
                break
        return [self._cls, *ids[: max_length - 2], self._sep]

    def _word(self, word: str) -> list[int]:
        if len(word) > self._max_chars:
            return [self._unknown]
        vocab = self._vocab
        whole = vocab.get(word)
        if whole is not None:
            return [whole]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = vocab.get(word[start:end] if start == 0 else self._prefix + word[start:end])
                if piece is not None:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return [self._unknown]
        return pieces
