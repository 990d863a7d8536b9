"""The query path for models numpy_bert.py cannot run: the transformer exported once to ONNX, run with
onnxruntime and `tokenizers`.

Importing sentence-transformers and torch costs 5-10 s per process, which a one-query `docqa search`
(or the agent's first search) would pay for a 10 ms encode. For a mean-pooling model that is not a BERT the
numpy encoder runs (or one it disagrees with), the first process that has the model loaded anyway (an ingest
that embeds, or a search on a store made before this path existed) exports its graph to ONNX, converts it to
onnxruntime's ORT format (loadable without graph optimisation), checks that its vectors agree with the
transformer's on real text (docqa.embeddings.query_check) and caches it beside the static model, keyed by the
source model's files. Later processes embed queries with onnxruntime and the model's own tokenizer.json: about
0.5 s cold, no torch. A model whose pooling is not plain mean pooling, or an export that disagrees with the
transformer, is not used: queries then go through torch, as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from docqa.embeddings.cache import keyed_cache_dir
from docqa.embeddings.query_check import MIN_COSINE, agreement, mean_pooling_only, read_verdict, write_verdict

RECIPE = {"version": 1, "opset": 17, "format": "ort"}


def cache_dir(source: Path) -> Path:
    return keyed_cache_dir("onnx", source, RECIPE)


def usable_export(source: Path) -> Path | None:
    """The verified ORT model for the transformer at `source`, or None if there is none (yet)."""
    cache = cache_dir(source)
    verdict = read_verdict(cache)
    model = cache / "model.ort"
    return model if verdict and verdict.get("ok") and model.exists() else None


def export_tried(source: Path) -> bool:
    """Whether an export was made (usable or rejected): a rejected one is not tried again."""
    return (cache_dir(source) / "check.json").exists()


def export(source: Path, model: Any) -> Path | None:
    """Export the loaded SentenceTransformer `model` (from `source`) and verify it; the usable model or None.

    Written atomically into the cache, so a concurrent docqa sees a whole export or none.
    """
    if not mean_pooling_only(source):
        return None
    import torch

    transformer = model[0].auto_model
    cache = cache_dir(source)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".export-"))
    try:
        graph = work / "model.onnx"

        class HiddenStates(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = transformer

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        ids = torch.ones((2, 8), dtype=torch.long)
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes that the check below covers
            torch.onnx.export(HiddenStates().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(graph),
                              input_names=names, output_names=["last_hidden_state"], opset_version=RECIPE["opset"],
                              dynamic_axes={name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]},
                              dynamo=False)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(work / "model.ort")
        options.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        fast = OnnxQueryEmbedder(source.name, work / "model.ort", source, int(model.max_seq_length))
        min_cosine = agreement(fast, model)
        if min_cosine >= MIN_COSINE:
            os.replace(work / "model.ort", cache / "model.ort")
        ok = write_verdict(cache, work, min_cosine, source=str(source), recipe=RECIPE,
                           max_seq_length=int(model.max_seq_length))
        return cache / "model.ort" if ok else None
    finally:
        shutil.rmtree(work, ignore_errors=True)


class OnnxQueryEmbedder:
    """Embeds texts like the transformer it was exported from (mean pooling, unit length), without torch."""

    backend = "onnx"

    def __init__(self, name: str, model_file: Path, source: Path, max_seq_length: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = name
        self.max_seq_length = max_seq_length
        options = ort.SessionOptions()
        # The file is already optimised; ORT format loads without parsing a protobuf graph.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.load_model_format", "ORT")
        options.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
        options.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
        self._session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_seq_length)
        self._tokenizer.enable_padding(pad_id=self._tokenizer.padding["pad_id"] if self._tokenizer.padding else 0)

    @property
    def dimension(self) -> int:
        return int(self._session.get_outputs()[0].shape[-1])

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = self._tokenizer.encode_batch(list(texts[start : start + batch_size]))
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.append(pooled / np.where(norms == 0, 1.0, norms))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dimension), dtype=np.float32)


def load_query_embedder(name: str, location: str) -> OnnxQueryEmbedder | None:
    """The fast query embedder for the model at `location`, if a verified export is cached; else None."""
    source = Path(location)
    model_file = usable_export(source) if source.is_dir() else None
    if model_file is None:
        return None
    try:
        verdict = read_verdict(model_file.parent) or {}
        return OnnxQueryEmbedder(name, model_file, source, int(verdict["max_seq_length"]))
    except Exception:  # a damaged cache or an onnxruntime that cannot load it: torch still works
        return None
