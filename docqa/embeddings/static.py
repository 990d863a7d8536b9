"""The fast embedding tier: a static (model2vec) model distilled locally from the installed MiniLM.

A static model is one vector per vocabulary token; a text's embedding is the mean of its tokens'
vectors, so encoding costs a tokenizer pass and a table look-up (~100x faster than the transformer on
a 2-core CPU) at a cost in retrieval quality. docqa makes the model itself, once, from the local
transformer (no download): each token goes through the transformer alone ([CLS] token [SEP]), the
outputs are mean-pooled, reduced with PCA and down-weighted by Zipf rank (SIF). That is model2vec's
own `distill` recipe; it is written out here because `model2vec[distill]` pins transformers < 5.4
and needs `skeletoken`, which would fight sentence-transformers over the transformers version.
The result is cached under the user cache dir, keyed by the source model's files, so only the
first use pays (about 20-60 s).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from docqa.embeddings.cache import keyed_cache_dir
from docqa.embeddings.transformer import EmbeddingError

# Bump when the recipe changes: old caches are then ignored, not misread.
RECIPE = {"version": 1, "pooling": "mean", "pca_dims": 256, "sif_coefficient": 1e-4,
          "remove": r"\[unused\d+\]"}
_BATCH = 256


class StaticModelAdapter:
    """A model2vec StaticModel behind the slice of the SentenceTransformer interface `Embedder` uses.

    `tokenizer` is the source model's own Hugging Face tokenizer (the static model shares its
    vocabulary), so chunks are cut in the same tokens and have the same size in both tiers; that
    keeps a MiniLM re-rank of static results from ever seeing a truncated chunk.
    """

    def __init__(self, static_model: Any, tokenizer: Any, max_seq_length: int) -> None:
        self.static_model = static_model
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    def get_embedding_dimension(self) -> int:
        return int(self.static_model.dim)

    def encode(self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = True,
               convert_to_numpy: bool = True, show_progress_bar: bool = False) -> np.ndarray:
        # batch_size is the transformer's knob; a table look-up does better with large batches.
        vectors = np.asarray(self.static_model.encode(list(texts), batch_size=max(batch_size, 1024),
                                                      show_progress_bar=False), dtype=np.float32)
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms == 0, 1.0, norms)
        return vectors


def load_static(name: str, location: str) -> StaticModelAdapter:
    """The static model for the transformer at `location` (distilled and cached on first use)."""
    source = Path(location)
    if not source.is_dir():
        raise EmbeddingError(
            f"the static tier distils from a local model directory; '{name}' is not one. Pass a local "
            "sentence-transformers directory with --embedding-model, or use --embedding-backend torch"
        )
    try:
        from model2vec import StaticModel
    except ImportError:
        raise EmbeddingError("the static embedding tier needs model2vec: pip install 'docqa[fast]' "
                             "(or pip install model2vec), or use --embedding-backend torch") from None
    from transformers import PreTrainedTokenizerFast

    tokenizer_file = source / "tokenizer.json"
    if not tokenizer_file.exists():
        raise EmbeddingError(f"'{name}' has no fast tokenizer (tokenizer.json); the static tier needs one")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(source), local_files_only=True)
    cache = cache_dir(source)
    vectors_file = cache / "vectors.npy"
    if not vectors_file.exists():
        vectors = distill(source, tokenizer)
        _save(cache, vectors, source)
    vectors = np.load(vectors_file)
    from tokenizers import Tokenizer

    # The static model tokenizes with the same tokenizer.json, without [CLS]/[SEP] and without the
    # 512-token truncation model2vec applies by default (chunks are already sized).
    static = StaticModel(vectors=vectors, tokenizer=Tokenizer.from_file(str(tokenizer_file)),
                         normalize=True, base_model_name=name, max_length=None)
    return StaticModelAdapter(static, tokenizer, _max_seq_length(source, tokenizer))


def cache_dir(source: Path) -> Path:
    """Where the model distilled from `source` lives: keyed by the source's path, weights and recipe."""
    return keyed_cache_dir("static", source, RECIPE)


def distill(source: Path, tokenizer: Any) -> np.ndarray:
    """One vector per token id of `tokenizer` (zero for tokens never to be used), float32."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), local_files_only=True).eval()
    vocab_size = len(tokenizer)
    remove = re.compile(RECIPE["remove"])
    special = set(tokenizer.all_special_ids)
    kept = [i for token, i in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
            if i not in special and not remove.fullmatch(token)]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(kept), _BATCH):
            ids = torch.tensor([[cls, i, sep] for i in kept[start : start + _BATCH]], dtype=torch.long)
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            outputs.append(hidden.mean(dim=1).float().numpy())
    embeddings = np.nan_to_num(np.concatenate(outputs).astype(np.float64))
    embeddings = _pca(embeddings, RECIPE["pca_dims"])
    # Zipf's law on the vocabulary order stands in for token frequencies, as in model2vec.
    inv_rank = 1.0 / np.arange(2, len(kept) + 2)
    probability = inv_rank / inv_rank.sum()
    embeddings *= (RECIPE["sif_coefficient"] / (RECIPE["sif_coefficient"] + probability))[:, None]
    vectors = np.zeros((vocab_size, embeddings.shape[1]), dtype=np.float32)
    vectors[kept] = embeddings
    return vectors


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    centred = x - x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    components = eigenvectors[:, ::-1][:, :dims]
    return centred @ components


def _save(cache: Path, vectors: np.ndarray, source: Path) -> None:
    """Write atomically: a concurrent docqa either sees the whole model or distils its own."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".npy", delete=False) as handle:
        np.save(handle, vectors)
    os.replace(handle.name, cache / "vectors.npy")
    (cache / "source.json").write_text(json.dumps({"source": str(source), "recipe": RECIPE}, indent=2))


def _max_seq_length(source: Path, tokenizer: Any) -> int:
    """The source transformer's limit, so chunks have the same size in both tiers."""
    config = source / "sentence_bert_config.json"
    if config.exists():
        value = json.loads(config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(tokenizer.model_max_length, 512))
