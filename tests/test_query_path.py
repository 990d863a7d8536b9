"""The fast query path (issue 11): the numpy BERT encoder and its pure-Python tokenizer give the transformer's
vectors; one that disagrees is not used; a model numpy cannot run gets the ONNX export instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docqa.embeddings import numpy_bert, onnx, wordpiece
from docqa.embeddings.cache import use_cache_dir
from docqa.embeddings.transformer import model_location
from testkit.documents import real_text_paragraphs

MODEL = Path(model_location("all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def reference_tokenizer() -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()
    return tokenizer


@pytest.fixture(scope="module")
def ascii_tokenizer() -> wordpiece.AsciiWordPiece:
    found = wordpiece.settings(MODEL)
    assert found is not None, "MiniLM's tokenizer.json is BERT's pipeline over vocab.txt"
    return wordpiece.AsciiWordPiece(MODEL / "vocab.txt", **found)


EDGE_CASES = ["", "   ", "a" * 100, "a" * 101, "x" * 101 + " y", "\x00\x01\x0b\x0c\x1c\x7f tab\there",
              "Don't stop-believing!!! e.g. U.S.A. $5,000.00 #tag @user ~home {a|b} [x] `q` ^_^",
              "UPPER lower MiXeD 1234567890 3.14159", "hello [MASK] world", "HELLO [mask]",
              "key 9f1c2e7a-3b44-4d0e-9a65-0c7f2b1d8e33 maps to value 5e0d9c21-77aa-4f1b-8c2d-3a9e6b4f1c07",
              " ".join(["tokenization"] * 400)]


def test_ascii_wordpiece_gives_the_ids_tokenizers_gives(ascii_tokenizer: Any, reference_tokenizer: Any) -> None:
    texts = EDGE_CASES + [t for t in real_text_paragraphs(400) if t.isascii()]
    assert len(texts) > 300
    left = 0
    for text in texts:
        ids = ascii_tokenizer.encode(text, 256)
        if ids is None:  # a special token's text: left to tokenizers
            left += 1
            continue
        assert ids == reference_tokenizer.encode(text).ids, text[:200]
    assert left == 2  # the two [MASK] texts
    assert ascii_tokenizer.encode("Ünïcödé", 256) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=400))
def test_ascii_wordpiece_matches_tokenizers_on_any_ascii(ascii_tokenizer: Any, reference_tokenizer: Any,
                                                        text: str) -> None:
    ids = ascii_tokenizer.encode(text, 256)
    assert ids is None or ids == reference_tokenizer.encode(text).ids


def test_the_numpy_encoder_gives_the_transformers_vectors(embedder: Any) -> None:
    fast = numpy_bert.NumpyBertEmbedder("m", MODEL, 256, wordpiece.settings(MODEL))
    texts = real_text_paragraphs(40) + EDGE_CASES + [
        "Ünïcödé façade, “quotes”, 東京は日本の首都です, an emoji 🥰", "what is the capital of australia"]
    expected = embedder.embed(texts)
    for got in (fast.embed(texts, batch_size=16), np.stack([fast.embed([t])[0] for t in texts])):
        cosines = np.sum(got * expected, axis=1)
        assert cosines.min() >= 0.9999, texts[int(cosines.argmin())][:200]
    assert fast.embed([]).shape == (0, 384)


def test_an_encoder_that_disagrees_is_recorded_and_not_used(tmp_path: Path, embedder: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    use_cache_dir(tmp_path / "cache")
    try:
        monkeypatch.setattr(numpy_bert, "_gelu_in_place", lambda h: None)  # a wrong activation: vectors drift
        assert numpy_bert.verify(MODEL, embedder._model) is False
        verdict = json.loads((numpy_bert.cache_dir(MODEL) / "check.json").read_text())
        assert verdict["ok"] is False and verdict["min_cosine"] < 0.999
        assert numpy_bert.check_tried(MODEL) and numpy_bert.load_query_embedder("m", str(MODEL)) is None
        monkeypatch.undo()
        assert numpy_bert.verify(MODEL, embedder._model) is True
        assert isinstance(numpy_bert.load_query_embedder("m", str(MODEL)), numpy_bert.NumpyBertEmbedder)
    finally:
        use_cache_dir(None)


def test_a_model_numpy_cannot_run_gets_the_onnx_export(tmp_path: Path) -> None:
    """A BERT with the tanh GELU is not what numpy_bert runs: the ingest's preparation exports it to ONNX,
    checked against torch, and queries use that."""
    from docqa.embeddings.load import load_embedder, load_query_embedder, prepare_query_embedder, query_export_pending

    model = tmp_path / "tanh-minilm"
    shutil.copytree(MODEL, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    use_cache_dir(tmp_path / "cache")
    try:
        embedder = load_embedder(str(model))
        assert not numpy_bert.runnable(model) and query_export_pending(embedder)
        assert prepare_query_embedder(embedder) and not query_export_pending(embedder)
        assert onnx.usable_export(model) is not None and not numpy_bert.check_tried(model)
        fast = load_query_embedder(str(model))
        assert isinstance(fast, onnx.OnnxQueryEmbedder)
        texts = real_text_paragraphs(5)
        assert np.sum(fast.embed(texts) * embedder.embed(texts), axis=1).min() >= 0.999
    finally:
        use_cache_dir(None)
        load_query_embedder.cache_clear()
