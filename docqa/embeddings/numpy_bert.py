"""The fastest query path: a BERT sentence model (MiniLM) run in numpy, its weights read in place.

A cold `docqa search` embeds one short query. Importing torch for that costs 5-10 s; creating an onnxruntime
session ~0.25 s; building the `tokenizers` tokenizer ~25 ms. This encoder maps the model's own
model.safetensors (no copy, no conversion), tokenizes ASCII text with the pure-Python WordPiece in
wordpiece.py (other text with `tokenizers`, loaded when first needed) and runs the layers in numpy: ready in
~10 ms, ~10 ms a query. Texts are packed without padding (attention runs per text), so a batch costs what its
tokens cost.

It is used only after a process that has the transformer loaded anyway (an ingest that embeds) has checked
that it agrees with it (docqa.embeddings.query_check); the verdict is cached, keyed by the model's weights,
config and tokenizer files. Models it cannot run (not BERT, not plain mean pooling, sharded or non-float
weights) use the ONNX path instead.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from docqa.embeddings.cache import keyed_cache_dir
from docqa.embeddings import wordpiece
from docqa.embeddings.query_check import agreement, mean_pooling_only, read_verdict, write_verdict

RECIPE = {"version": 1, "encoder": "numpy-bert"}
_DTYPES = {"F32": np.float32, "F16": np.float16}
_GELU_ROWS = 128  # rows of the feed-forward activations done at a time, so the temporaries stay in cache


def cache_dir(source: Path) -> Path:
    """Keyed by the weights (as every derived file is) and by the config and tokenizer files read here."""
    files = {}
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        try:
            stat = (source / name).stat()
            files[name] = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            files[name] = None
    return keyed_cache_dir("numpy", source, {**RECIPE, "files": files})


def check_tried(source: Path) -> bool:
    return read_verdict(cache_dir(source)) is not None


def verified(source: Path) -> bool:
    verdict = read_verdict(cache_dir(source))
    return bool(verdict and verdict.get("ok"))


def runnable(source: Path) -> bool:
    """Whether this encoder can run the sentence-transformers model at `source` at all."""
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (mean_pooling_only(source) and config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and (source / "model.safetensors").is_file())


def verify(source: Path, model: Any) -> bool:
    """Check the encoder against the loaded SentenceTransformer `model` (from `source`) and record the verdict;
    True if it agrees. A model it cannot load is recorded as not agreeing, so it is not tried again."""
    cache = cache_dir(source)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".check-"))
    ascii_tokenizer = wordpiece.settings(source)
    try:
        try:
            fast = NumpyBertEmbedder(source.name, source, int(model.max_seq_length), ascii_tokenizer)
            min_cosine = agreement(fast, model)
        except (OSError, ValueError, KeyError, TypeError):  # weights or config not as this encoder reads them
            min_cosine = -1.0
        return write_verdict(cache, work, min_cosine, source=str(source), recipe=RECIPE,
                             max_seq_length=int(model.max_seq_length), ascii_tokenizer=ascii_tokenizer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_query_embedder(name: str, location: str) -> NumpyBertEmbedder | None:
    """The numpy encoder for the model at `location` if it was checked and agreed; else None."""
    source = Path(location)
    verdict = read_verdict(cache_dir(source)) if source.is_dir() else None
    if not verdict or not verdict.get("ok"):
        return None
    try:
        return NumpyBertEmbedder(name, source, int(verdict["max_seq_length"]), verdict.get("ascii_tokenizer"))
    except Exception:  # weights changed under a stale verdict, a damaged file: the other paths still work
        return None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file as read-only arrays mapped from it (float16 ones converted)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header_length = struct.unpack("<Q", f.read(8))[0]
        if header_length > size - 8:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(f.read(header_length))
    raw = np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_length))  # plain arrays out
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__" or spec["dtype"] not in _DTYPES:
            continue
        start, end = spec["data_offsets"]
        tensor = raw[start:end].view(_DTYPES[spec["dtype"]]).reshape(spec["shape"])
        tensors[name] = tensor if tensor.dtype == np.float32 else tensor.astype(np.float32)
    return tensors


class NumpyBertEmbedder:
    """Embeds texts like the sentence-transformers BERT model at `source` (mean pooling, unit length).

    `ascii_tokenizer` is wordpiece.settings(source), or None to tokenize everything with `tokenizers`."""

    backend = "numpy"

    def __init__(self, name: str, source: Path, max_seq_length: int, ascii_tokenizer: dict[str, Any] | None) -> None:
        self.name = name
        self._source = source
        self.max_seq_length = max_seq_length
        config = json.loads((source / "config.json").read_text())
        self._heads = int(config["num_attention_heads"])
        self._layers = int(config["num_hidden_layers"])
        self._eps = np.float32(config.get("layer_norm_eps", 1e-12))
        tensors = read_safetensors(source / "model.safetensors")
        prefix = next((p for p in ("", "bert.") if f"{p}embeddings.word_embeddings.weight" in tensors), "")
        self._w = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
        missing = [n for n in self._names() if n not in self._w]
        if missing:
            raise KeyError(f"{source}: no tensor {missing[0]}")
        self._ascii = wordpiece.AsciiWordPiece(source / "vocab.txt", **ascii_tokenizer) if ascii_tokenizer else None
        self._tokenizer: Any = None  # `tokenizers`' own, for other text: made when first needed

    def _token_ids(self, text: str) -> list[int]:
        ids = self._ascii.encode(text, self.max_seq_length) if self._ascii else None
        if ids is None:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(self._source / "tokenizer.json"))
                tokenizer.enable_truncation(self.max_seq_length)
                tokenizer.no_padding()  # texts are packed, not padded (tokenizer.json may pad to a fixed length)
                self._tokenizer = tokenizer
            ids = self._tokenizer.encode(text).ids
        return ids

    def _names(self) -> list[str]:
        names = [f"embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                             "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")]
        for layer in range(self._layers):
            for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                         "output.dense", "output.LayerNorm"):
                names += [f"encoder.layer.{layer}.{part}.weight", f"encoder.layer.{layer}.{part}.bias"]
        return names

    @property
    def dimension(self) -> int:
        return int(self._w["embeddings.word_embeddings.weight"].shape[1])

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            pooled = self._mean_pooled([self._token_ids(text) for text in texts[start : start + batch_size]])
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.append(pooled / np.where(norms == 0, 1.0, norms))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dimension), dtype=np.float32)

    def _mean_pooled(self, ids: list[list[int]]) -> np.ndarray:
        """The mean of each text's last hidden states; the texts' tokens are packed into one matrix. (One
        segment per text: every token type is 0, as the model's tokenizer gives for a single text.)"""
        w = self._w
        lengths = np.array([len(i) for i in ids])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        positions = np.concatenate([np.arange(n) for n in lengths])
        x = w["embeddings.word_embeddings.weight"][np.concatenate(ids)] + \
            w["embeddings.position_embeddings.weight"][positions] + \
            w["embeddings.token_type_embeddings.weight"][0]
        x = self._layer_norm(x, "embeddings.LayerNorm")
        for layer in range(self._layers):
            prefix = f"encoder.layer.{layer}."
            context = self._attention(x, prefix, starts, lengths)
            context += x
            x = self._layer_norm(context, prefix + "attention.output.LayerNorm")
            hidden = self._linear(x, prefix + "intermediate.dense")
            _gelu_in_place(hidden)
            out = self._linear(hidden, prefix + "output.dense")
            out += x
            x = self._layer_norm(out, prefix + "output.LayerNorm")
        return np.add.reduceat(x, starts, axis=0) / lengths[:, None].astype(np.float32)

    def _attention(self, x: np.ndarray, prefix: str, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Multi-head self-attention within each text, then the output projection."""
        heads = self._heads
        size = x.shape[1] // heads
        query = self._linear(x, prefix + "attention.self.query")
        query *= np.float32(1.0 / np.sqrt(size))
        key = self._linear(x, prefix + "attention.self.key")
        value = self._linear(x, prefix + "attention.self.value")
        context = np.empty_like(x)
        for start, n in zip(starts.tolist(), lengths.tolist(), strict=True):
            rows = slice(start, start + n)
            scores = query[rows].reshape(n, heads, size).transpose(1, 0, 2) @ \
                key[rows].reshape(n, heads, size).transpose(1, 2, 0)
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context[rows] = (scores @ value[rows].reshape(n, heads, size).transpose(1, 0, 2)) \
                .transpose(1, 0, 2).reshape(n, heads * size)
        return self._linear(context, prefix + "attention.output.dense")

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        out = x @ self._w[name + ".weight"].T
        out += self._w[name + ".bias"]
        return out

    def _layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        """LayerNorm over the last axis, in place."""
        x -= x.mean(axis=-1, keepdims=True)
        variance = np.einsum("ij,ij->i", x, x)[:, None] / np.float32(x.shape[1])
        x /= np.sqrt(variance + self._eps)
        x *= self._w[name + ".weight"]
        x += self._w[name + ".bias"]
        return x


def _gelu_in_place(h: np.ndarray) -> None:
    """BERT's exact (erf) GELU, x * (1 + erf(x / sqrt 2)) / 2, in place. numpy has no erf: Abramowitz and
    Stegun 7.1.26 (absolute error below 1.5e-7, under float32's resolution of these values)."""
    for start in range(0, len(h), _GELU_ROWS):
        x = h[start : start + _GELU_ROWS]
        z = x * np.float32(0.7071067811865476)
        a = np.abs(z)
        t = a * np.float32(0.3275911)
        t += 1
        np.reciprocal(t, out=t)
        poly = t * np.float32(1.061405429)
        for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
            poly += np.float32(coefficient)
            poly *= t
        np.square(a, out=a)
        np.negative(a, out=a)
        np.exp(a, out=a)
        poly *= a  # 1 - erf(|z|)
        np.copysign(poly, z, out=poly)
        np.sign(z, out=z)
        z += 1
        z -= poly  # 1 + erf(z)
        x *= z
        x *= np.float32(0.5)
