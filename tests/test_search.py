"""`docqa search`: pages that cover the ranking exactly once, its output formats, exact identifiers
(the paper's 140 nested-KV keys) found by hybrid search where dense search alone misses some, and
natural-language questions that hybrid search answers at least as well as dense search alone."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from docqa.archive.store import ArchivalStore
from docqa.cli.config import resolve
from docqa.ingest.pipeline import Ingestor
from testkit.documents import NQ_DATA, real_text_paragraphs, write_text
from tests.helpers import invoke, invoke_json, search_json

KV_DATA = Path(__file__).parent.parent / "data" / "nested_kv" / "kv-retrieval-140_keys.first.jsonl.gz"
HEADER = re.compile(r"^Showing (\d+) of (\d+) results \(page (\d+)/(\d+)\):$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    """A store of about 20 chunks of real text in three files; returns the store directory."""
    root = tmp_path_factory.mktemp("corpus")
    paragraphs = real_text_paragraphs(30)
    for n in range(3):
        write_text(root / "docs" / f"part{n}.txt", "\n\n".join(paragraphs[10 * n : 10 * n + 10]))
    store = root / "store"
    result = invoke("ingest", root / "docs", "--store", store, "-q")
    assert result.exit_code == 0, result.stderr
    return store


QUERY = "the history of football in the United States"


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_pages_cover_the_ranking_once(corpus: Path, mode: str) -> None:
    whole = search_json(QUERY, "--store", corpus, "--mode", mode, "--page-size", 100)
    ranking = [(hit["source"], hit["chunk"]) for hit in whole["results"]]
    assert whole["total"] == len(ranking) >= 9 and whole["num_pages"] == 1
    assert len(set(ranking)) == len(ranking)

    first = search_json(QUERY, "--store", corpus, "--mode", mode, "--page-size", 4)
    pages = first["num_pages"]
    assert pages == -(-first["total"] // 4) and first["total"] == whole["total"]
    seen = []
    for page in range(pages):
        payload = search_json(QUERY, "--store", corpus, "--mode", mode, "--page-size", 4, "--page", page)
        assert payload["page"] == page and payload["num_pages"] == pages
        assert len(payload["results"]) == (4 if page < pages - 1 else whole["total"] - 4 * (pages - 1))
        seen += [(hit["source"], hit["chunk"]) for hit in payload["results"]]
    assert seen == ranking  # no gaps, no repeats, same order
    scores = [hit["score"] for hit in whole["results"]]
    assert scores == sorted(scores, reverse=True)


def test_json_shape(corpus: Path) -> None:
    payload = search_json("Nobel Prize in Physics", "--store", corpus, "--page-size", 3)
    assert {"query", "page", "num_pages", "total", "results"} <= set(payload)
    assert payload["query"] == "Nobel Prize in Physics" and payload["page"] == 0
    assert len(payload["results"]) == 3
    for hit in payload["results"]:
        assert {"text", "source", "page", "chunk", "score"} <= set(hit)
        assert isinstance(hit["page"], int) and hit["page"] >= 1 and Path(hit["source"]).name.startswith("part")
    assert "Nobel Prize in Physics" in payload["results"][0]["text"]


def test_text_output_pages_like_the_paper(corpus: Path) -> None:
    total = search_json(QUERY, "--store", corpus, "--page-size", 4)["total"]
    last = -(-total // 4) - 1
    for page in (0, last):
        result = invoke("search", QUERY, "--store", corpus, "--page-size", 4, "--page", page)
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        shown = total - 4 * last if page == last else 4
        assert HEADER.match(lines[0]).groups() == (str(shown), str(total), str(page), str(last)), lines[0]
        numbers = re.findall(r"^\[(\d+)\] .*part\d\.txt, page 1 \(chunk \d+\):$", result.stdout, re.MULTILINE)
        assert numbers == [str(n) for n in range(4 * page + 1, 4 * page + 1 + shown)]

    past = invoke("search", QUERY, "--store", corpus, "--page-size", 4, "--page", last + 1)
    assert past.exit_code == 0
    assert f"No results on page {last + 1}" in past.stdout and f"{last + 1} pages" in past.stdout
    result, payload = invoke_json("search", QUERY, "--store", corpus, "--page-size", 4, "--page", last + 1)
    assert payload["results"] == [] and payload["total"] == total


def test_bad_page_is_a_usage_error(corpus: Path) -> None:
    result = invoke("search", QUERY, "--store", corpus, "--page", -1)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_empty_store_says_so(tmp_path: Path, embedder: Any) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    invoke("ingest", empty)  # fails (no text) but leaves an empty store
    result = invoke("search", "anything at all")
    assert result.exit_code == 0 and result.stdout.strip() == "No results found."
    assert search_json("anything")["total"] == 0


# -- exact identifiers: the paper's nested key-value data -------------------------------------------------
class BatchedEmbedder:
    """The real embedder, with the vectors of known texts computed in one batch up front.

    The ingest embeds file by file and search embeds query by query; on a busy 2-core machine those 420
    single calls take minutes. Same model, same vectors (padding is masked), a fraction of the time.
    """

    def __init__(self, inner: Any, texts: list[str]) -> None:
        self._inner = inner
        self._vectors = dict(zip(texts, inner.embed(texts), strict=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        missing = [text for text in texts if text not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self._inner.embed(missing, batch_size), strict=True))
        return np.stack([self._vectors[text] for text in texts])


@pytest.fixture(scope="module")
def kv_store(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> tuple[ArchivalStore, list[tuple[str, str]]]:
    """The 140 key-value pairs, one file per pair as `Key-value pair: key = K, value = V`, ingested."""
    with gzip.open(KV_DATA, "rt") as handle:
        pairs = [tuple(pair) for pair in json.loads(handle.readline())["ordered_kv_records"]]
    root = tmp_path_factory.mktemp("kv")
    lines = [f"Key-value pair: key = {key}, value = {value}" for key, value in pairs]
    for n, line in enumerate(lines):
        write_text(root / "pairs" / f"pair-{n:03d}.txt", line + "\n")
    fast = BatchedEmbedder(embedder, lines + [key for key, _ in pairs] + [key_question(key) for key, _ in pairs])
    store = ArchivalStore(resolve(store_dir=root / "store"), fast)  # what `docqa search` runs
    report = Ingestor(store, progress=False).run([root / "pairs"])
    assert report.files_ingested == 140 and report.chunks_total == 140 and not report.files_failed
    return store, pairs


def key_question(key: str) -> str:
    return f"What is the value for key {key}?"


def first_hit_holds(store: ArchivalStore, key: str, mode: str, query: str | None = None) -> bool:
    hits = store.search(query or key, mode=mode).hits
    return bool(hits) and f"key = {key}," in hits[0].record.text


def test_hybrid_search_finds_every_key_first(kv_store: tuple[ArchivalStore, list[tuple[str, str]]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    store, pairs = kv_store
    assert len(pairs) == 140
    hybrid = sum(first_hit_holds(store, key, "hybrid") for key, _ in pairs)
    dense = sum(first_hit_holds(store, key, "dense") for key, _ in pairs)
    lexical = sum(first_hit_holds(store, key, "lexical") for key, _ in pairs)
    with capsys.disabled():
        print(f"\n140 nested-KV keys, pair holding the key ranked first: hybrid {hybrid}/140, "
              f"dense-only {dense}/140, lexical-only {lexical}/140")
    assert hybrid == 140
    assert lexical == 140
    # The key inside a question: its words match no pair or every pair, the key only its own.
    assert all(first_hit_holds(store, key, "hybrid", key_question(key)) for key, _ in pairs)

    key, value = pairs[77]  # and through the command itself
    top = search_json(key, "--store", store.settings.store_dir)["results"][0]
    assert top["text"].strip() == f"Key-value pair: key = {key}, value = {value}"
    assert Path(top["source"]).name == "pair-077.txt" and top["page"] == 1


@pytest.fixture(scope="module")
def marker_store(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    """Four files of ten real passages each; one sentence in each holds a word found nowhere else."""
    root = tmp_path_factory.mktemp("markers")
    paragraphs = real_text_paragraphs(640)[600:]
    for n in range(4):
        parts = paragraphs[10 * n : 10 * n + 10]
        parts[5] += f" The catalogue number is zqx{n:02d}marker."
        write_text(root / "docs" / f"notes{n}.txt", "\n\n".join(parts))
    result = invoke("ingest", root / "docs", "--store", root / "store", "-q")
    assert result.exit_code == 0, result.stderr
    return root / "store"


def test_a_word_in_one_chunk_of_a_long_text_is_the_first_hit(marker_store: Path) -> None:
    dense_misses = 0
    for n in range(4):
        word = f"zqx{n:02d}marker"
        top = search_json(word, "--store", marker_store)["results"][0]
        assert word in top["text"] and Path(top["source"]).name == f"notes{n}.txt"
        dense_top = search_json(word, "--store", marker_store, "--mode", "dense")["results"][0]
        dense_misses += word not in dense_top["text"]
    # The embedding reads the rest of the chunk: it ranked two of them 4th and 5th, 0.26 below its first.
    assert dense_misses >= 2


@pytest.mark.parametrize("phrasing", ["catalogue number {}", "Where is {} mentioned?"])
def test_a_code_asked_with_common_words_is_the_first_hit(marker_store: Path, phrasing: str) -> None:
    """The words around the code ("catalogue number") are in every marker chunk, so lexical search alone
    cannot single it out by score; the code itself, found in one chunk only, does."""
    for n in range(4):
        word = f"zqx{n:02d}marker"
        top = search_json(phrasing.format(word), "--store", marker_store)["results"][0]
        assert word in top["text"], (phrasing, word)


# -- natural-language questions: the NQ-open oracle passages ----------------------------------------------
NQ_QUESTIONS = 150


@pytest.fixture(scope="module")
def nq_store(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> tuple[ArchivalStore, list[tuple[str, str]]]:
    """The gold passages of the first 150 NQ-open questions (149 distinct), one file each as the doc-qa
    bench writes them; returns the store and (question, passage file name) pairs."""
    with gzip.open(NQ_DATA, "rt", encoding="utf-8") as handle:
        items = [json.loads(line) for line in itertools.islice(handle, NQ_QUESTIONS)]
    root = tmp_path_factory.mktemp("nq")
    names: dict[str, str] = {}
    questions = []
    for item in items:
        passage = f"{item['ctxs'][0]['title']}\n\n{item['ctxs'][0]['text']}"
        name = names.setdefault(passage, f"p{len(names):03d}.txt")
        questions.append((item["question"], name))
    for passage, name in names.items():
        write_text(root / "docs" / name, passage)
    fast = BatchedEmbedder(embedder, list(names) + [question for question, _ in questions])
    store = ArchivalStore(resolve(store_dir=root / "store"), fast)
    report = Ingestor(store, progress=False).run([root / "docs"])
    assert report.files_ingested == len(names) == 149 and not report.files_failed
    return store, questions


def first_source(store: ArchivalStore, query: str, mode: str) -> str:
    return Path(store.search(query, mode=mode).hits[0].record.source).name


def test_questions_find_their_passage_first_at_least_as_often_as_dense(
        nq_store: tuple[ArchivalStore, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]) -> None:
    store, questions = nq_store
    hybrid = sum(first_source(store, question, "hybrid") == name for question, name in questions)
    dense = sum(first_source(store, question, "dense") == name for question, name in questions)
    with capsys.disabled():
        print(f"\n{len(questions)} NQ-open questions, gold passage ranked first: hybrid {hybrid}, dense-only {dense}")
    # Reciprocal rank fusion with BM25 (k = 60) ranked 143 first here against dense's 145.
    assert hybrid >= dense >= 0.9 * len(questions)


def test_common_words_do_not_push_down_the_passage_dense_ranks_first(
        nq_store: tuple[ArchivalStore, list[tuple[str, str]]]) -> None:
    store, questions = nq_store
    question, gold = next(pair for pair in questions if pair[0] == "what is the largest bill in american money")
    where = ("--store", store.settings.store_dir)
    dense = search_json(question, *where, "--mode", "dense")["results"]
    assert Path(dense[0]["source"]).name == gold
    assert dense[0]["text"].startswith("Large denominations of United States currency")
    # BM25's best matches share the question's words, not its meaning: a song title is second.
    lexical = [hit["text"] for hit in search_json(question, *where, "--mode", "lexical")["results"]]
    assert lexical[1].startswith("For What It's Worth")
    assert not any(text.startswith("Large denominations") for text in lexical)
    hybrid = search_json(question, *where)["results"]
    assert Path(hybrid[0]["source"]).name == gold
