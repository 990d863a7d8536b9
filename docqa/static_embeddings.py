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

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

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
    from docqa.embeddings import EmbeddingError

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
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(source))
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


def keyed_cache_dir(kind: str, source: Path, recipe: dict[str, Any]) -> Path:
    """A cache directory for something made from the model at `source` (the static model, the ONNX export),
    keyed by the source's path, its weights files and the recipe."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(str(source.resolve()).encode())
    for weights in sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(os.environ.get("DOCQA_CACHE_DIR") or platformdirs.user_cache_dir("docqa", appauthor=False))
    return root / kind / digest.hexdigest()[:16]


def distill(source: Path, tokenizer: Any) -> np.ndarray:
    """One vector per token id of `tokenizer` (zero for tokens never to be used), float32."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source)).eval()
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


# With the static tier, re-ranking this many results by the transformer brings hybrid recall@10 on the
# NQ-oracle corpus to 0.988 against the transformer's own 0.996 (30: 0.984, none: 0.961;
# benchmarks/embedding_tiers.py). Each cold search then embeds up to this many chunks (~1.2 s on 2 cores).
DEFAULT_RERANK_DEPTH = 50


class Reranker:
    """Re-orders the head of a ranking by the full transformer's cosine to the query.

    The static tier trades retrieval quality for ingest speed; this buys most of it back at query
    time by embedding only the top candidates (chunk texts, cached by content hash, so paging and
    related queries reuse them) with the transformer the static model was distilled from.
    """

    def __init__(self, embedder: Any, batch_size: int = 32, cache_size: int = 20_000) -> None:
        from collections import OrderedDict

        self.embedder = embedder
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def rerank(self, query: str, candidates: list[tuple[str, str, str]]) -> list[tuple[str, float]]:
        """(id, cosine) best first, for candidates given as (id, content_hash, text); stable on ties."""
        if not candidates:
            return []
        missing = {digest: text for _, digest, text in candidates if digest not in self.cache}
        if missing:
            vectors = self.embedder.embed(list(missing.values()), self.batch_size)
            for digest, vector in zip(missing, vectors, strict=True):
                self.cache[digest] = vector
        for _, digest, _ in candidates:
            self.cache.move_to_end(digest)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        query_vector = self.embedder.embed([query])[0]
        scores = np.stack([self.cache[digest] for _, digest, _ in candidates]) @ query_vector
        order = sorted(range(len(candidates)), key=lambda k: (-float(scores[k]), k))
        return [(candidates[k][0], float(scores[k])) for k in order]
