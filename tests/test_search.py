"""`docqa search`: pages that cover the ranking exactly once, its output formats, and exact identifiers
(the paper's 140 nested-KV keys) found by hybrid search where dense search alone misses some."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from docqa.ingest import Ingestor
from docqa.settings import resolve
from docqa.store import ArchivalStore
from tests.documents import real_text_paragraphs, write_text
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


def test_empty_store_says_so(embedder: Any) -> None:
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
    fast = BatchedEmbedder(embedder, lines + [key for key, _ in pairs])
    store = ArchivalStore(resolve(store_dir=root / "store"), fast)  # what `docqa search` runs
    report = Ingestor(store, progress=False).run([root / "pairs"])
    assert report.files_ingested == 140 and report.chunks_total == 140 and not report.files_failed
    return store, pairs


def first_hit_holds(store: ArchivalStore, key: str, mode: str) -> bool:
    hits = store.search(key, mode=mode).hits
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

    key, value = pairs[77]  # and through the command itself
    top = search_json(key, "--store", store.settings.store_dir)["results"][0]
    assert top["text"].strip() == f"Key-value pair: key = {key}, value = {value}"
    assert Path(top["source"]).name == "pair-077.txt" and top["page"] == 1
