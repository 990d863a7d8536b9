"""Loading embedders: the transformer or the static tier for ingest, and the fastest one for queries."""

from __future__ import annotations

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
    """The fastest embedder for queries to a store built with the transformer `name`: its verified ONNX
    export (docqa.embeddings.onnx) if one is cached, else None (the caller then uses the transformer)."""
    try:
        location = model_location(name)
    except EmbeddingError:
        return None
    from docqa.embeddings.onnx import load_query_embedder as load_onnx

    return load_onnx(name, location)


def query_export_pending(embedder: Embedder) -> bool:
    """Whether `embedder` can be exported for the fast query path and has not been yet."""
    from docqa.embeddings import onnx as query_embeddings

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
    from docqa.embeddings import onnx as query_embeddings

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
