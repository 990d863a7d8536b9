"""Hybrid search's fusion: how a dense ranking (cosine similarities) and a lexical one (BM25) become one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

# What the best lexical match adds to a chunk's cosine similarity, more when few chunks match.
LEXICAL_BONUS = 0.2


def lexical_bonuses(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """(chunk id, bonus) for lexical hits given best first as (chunk id, score).

    The best match gets LEXICAL_BONUS, or 1/n when only n < 5 chunks match at all, the others in
    proportion to their score. An identifier found in one chunk then decides whatever the embedding makes
    of the rest of the chunk: among 60 words each in one sentence of a long text, 0.2 alone put 32 below
    the first hit.
    """
    if not hits:
        return []
    top = max(LEXICAL_BONUS, 1.0 / len(hits)) / max(hits[0][1], 1e-12)
    return [(chunk_id, score * top) for chunk_id, score in hits]


def add_identifier_bonuses(bonuses: list[tuple[str, float]], matches: list[tuple[str, int]]) -> list[tuple[str, float]]:
    """`bonuses` plus 1/n for each rare identifier of the query (a term with letters and digits found in only
    n chunks: Catalog.identifier_matches) that a chunk holds.

    The 1/n rule of `lexical_bonuses` counts every chunk the query matches, so a code asked with common
    words ("catalogue number zqx07marker") got only the usual 0.2 and stayed below chunks the embedding
    liked better; a code is what embeddings cannot read, so it decides here. Ordinary rare words do not
    count: boosting every chunk that holds a word found in one chunk only cost 1.7 points of NQ recall@1.
    Measured with this rule (NQ corpus plus 60 files, each with one code in one sentence): the code's chunk
    came first for 60 of 60 codes asked bare, as "catalogue number CODE" and as "Where is CODE mentioned?"
    (without it: 60, 5 and 10); NQ recall@1/2/5/10 89.7/96.4/99.2/99.7% (without: 89.9/96.4/99.2/99.7%).
    """
    if not matches:
        return bonuses
    total = dict(bonuses)
    for chunk_id, n in matches:
        total[chunk_id] = total.get(chunk_id, 0.0) + 1.0 / n
    return list(total.items())


def fuse(dense: list[tuple[str, float]], lexical: list[tuple[str, float]], depth: int) -> list[tuple[str, float]]:
    """The hybrid ranking: each chunk's cosine similarity plus its lexical bonus (`lexical_bonuses`).

    `dense` is (id, cosine), `lexical` (id, bonus). A lexical match beyond the dense ranking counts at the
    ranking's last cosine, an upper bound of its own.

    Why not reciprocal rank fusion: RRF (k = 60) gives BM25's ranking as much say as the dense one, and the
    common words of a question make BM25 rank weak matches high. On the NQ-open oracle corpus (2,655
    questions, `docqa bench doc-qa --mode ceiling`) RRF had recall@1/2/5/10 84.6/92.1/96.4/98.1% against
    89.7/96.5/99.1/99.4% for dense alone, and a lower BM25 weight in RRF kept losing either questions or
    UUID keys (weight 0.5: 86.3% at 1, all 140 keys; 0.2: 88.1%, 138 keys). A bonus in cosine units decides
    among chunks the embedding finds about equally similar: for a UUID key, which it cannot read, the key's
    pair was at most 0.05 below the top among the paper's 140; when it ranks a question's passage first, its
    lead is 0.24 (median). With a bonus of 0.2: 89.9/96.4/99.2/99.7%, all 140 keys first. 0.1 gave
    90.4/96.6/99.2/99.6% but a rare word asked with common ones ("catalogue number zqx07marker", 60 such
    words among 3,047 chunks) reached the top 5 less often: 13 of 60 against 27 (RRF: 18).
    """
    scores = dict(dense)
    floor = dense[-1][1] if dense else 0.0
    for chunk_id, bonus in lexical:
        scores[chunk_id] = scores.get(chunk_id, floor) + bonus
    ordered = sorted(scores, key=lambda i: (-scores[i], i))
    return [(i, scores[i]) for i in ordered[:depth]]


_tune_threads = False  # see allow_thread_tuning


def allow_thread_tuning(allowed: bool = True) -> None:
    """Let hybrid searches change torch's (process-wide) thread count, as `one_core_less` says. The `docqa`
    command allows it; a library caller's process is left alone unless it asks."""
    global _tune_threads
    _tune_threads = allowed


@contextmanager
def one_core_less() -> Iterator[None]:
    """Let torch use one core less while a lexical search runs in a thread (the query embedding barely
    gains from a second thread, SQLite does): on 2 cores a 100k-chunk hybrid search took 35 ms with
    torch's two threads fighting SQLite, 22 ms with one, against 17 ms for the dense half alone.
    Only where allowed (allow_thread_tuning): torch's thread count belongs to the whole process."""
    torch = sys.modules.get("torch") if _tune_threads else None  # the static tier and fast query paths never load it
    threads = torch.get_num_threads() if torch else 1
    if threads < 2:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
