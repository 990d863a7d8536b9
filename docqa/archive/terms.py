"""The words and identifiers of a query, as both catalogs match them."""

from __future__ import annotations

import re

_TERM = re.compile(r"[\w][\w\-.:/@']*", re.UNICODE)


def query_terms(query: str) -> list[str]:
    """Words and identifiers of a query (UUIDs, error codes and paths stay whole)."""
    terms = [term.strip(".:/@'-") for term in _TERM.findall(query)]
    return list(dict.fromkeys(term for term in terms if term))


def fts_query(query: str) -> str:
    """An FTS5 MATCH expression: each term as a quoted phrase, any of them may match."""
    return match_any(query_terms(query)[:64])


def match_any(terms: list[str]) -> str:
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
