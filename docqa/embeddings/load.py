"""Loading embedders: the transformer or the static tier for ingest, and the fastest one for queries."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from docqa.embeddings.transformer import Embedder, EmbeddingError, model_location
from docqa.settings import DEFAULT_EMBEDDING_MODEL

@lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, backend: str = "torch") -> Embedder:
    """Load (once per process) the embedder for `name`; backend "static" is the fast model2vec tier."""
    if backend == "static":
        from docqa.embeddings.static import load_static

        return Embedder(name, load_static(name, model_location(name)), backend)
    if backend != "torch":
        raise EmbeddingError(f"unknown embedding backend '{backend}': use torch or static")
    location = model_location(name)
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(location, device="cpu", local_files_only=True)  # never a download
    except Exception as exc:  # OSError, ValueError, HF errors: all mean "not loadable here"
        raise EmbeddingError(
            f"cannot load embedding model '{name}' ({type(exc).__name__}). docqa never downloads models: "
            "pass a local sentence-transformers directory with --embedding-model / DOCQA_EMBEDDING_MODEL"
        ) from None
    return Embedder(name, model, backend)


@lru_cache(maxsize=4)
def load_query_embedder(name: str = DEFAULT_EMBEDDING_MODEL) -> Any:
    """The fastest embedder for queries to a store built with the transformer `name`, none of which imports
    torch: the numpy encoder (docqa.embeddings.numpy_bert) if it was checked against the transformer, else its
    verified ONNX export (docqa.embeddings.onnx); None if neither is ready (the caller then uses the
    transformer)."""
    try:
        location = model_location(name)
    except EmbeddingError:
        return None
    from docqa.embeddings import numpy_bert

    fast = numpy_bert.load_query_embedder(name, location)
    if fast is None:
        from docqa.embeddings import onnx

        fast = onnx.load_query_embedder(name, location)
    return fast


def _fast_path_source(embedder: Embedder) -> Path | None:
    """The directory of `embedder`'s transformer if a fast query path can be made for it, else None."""
    if embedder.backend != "torch":
        return None
    from docqa.embeddings.query_check import mean_pooling_only

    try:
        source = Path(model_location(embedder.name))
    except EmbeddingError:
        return None
    return source if source.is_dir() and mean_pooling_only(source) else None


def query_export_pending(embedder: Embedder) -> bool:
    """Whether prepare_query_embedder has work to do for `embedder` (checking the numpy encoder, or exporting
    to ONNX for a model it cannot run)."""
    from docqa.embeddings import numpy_bert, onnx

    source = _fast_path_source(embedder)
    if source is None:
        return False
    if numpy_bert.runnable(source) and not numpy_bert.check_tried(source):
        return True
    return not numpy_bert.verified(source) and not onnx.export_tried(source)


def prepare_query_embedder(embedder: Embedder) -> bool:
    """Make a fast query path for `embedder`'s transformer unless done (or rejected) before: check the numpy
    encoder (a fraction of a second) and, only if it cannot run the model or disagrees, export to ONNX (5-15 s).
    True if a fast path exists afterwards. Cheap when done: a file check or two."""
    from docqa.embeddings import numpy_bert, onnx

    source = _fast_path_source(embedder)
    if source is None:
        return False
    if numpy_bert.runnable(source) and not numpy_bert.check_tried(source):
        with contextlib.suppress(Exception):  # a failed check leaves the ONNX path below; the next ingest retries
            numpy_bert.verify(source, embedder._model)
        load_query_embedder.cache_clear()
    if numpy_bert.verified(source):
        return True
    if onnx.export_tried(source):
        return onnx.usable_export(source) is not None
    try:
        made = onnx.export(source, embedder._model)
    except Exception:  # no onnx package, an export torch cannot trace: queries keep using torch
        return False
    load_query_embedder.cache_clear()
    return made is not None
