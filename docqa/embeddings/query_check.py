"""What a fast query path must agree with before it is used: the transformer's own vectors on real text.

Both fast paths (numpy_bert.py, onnx.py) embed queries without importing torch. Each is checked once, in a
process that has the transformer loaded anyway, against the transformer's vectors for CHECK_TEXTS (cosine >=
MIN_COSINE for every text, padded in a batch and alone); the verdict is cached beside the model's other
derived files, keyed by its weights, so a changed model is checked again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

MIN_COSINE = 0.999
# Real text of the kinds docqa embeds (a question, prose, a table row, identifiers, non-English, a long
# passage past 128 tokens), checked against the transformer before a fast path is trusted.
CHECK_TEXTS = [
    "what is the capital of australia",
    "Canberra is the capital city of Australia. Founded following the federation of the colonies of "
    "Australia as the seat of government for the new nation, it is Australia's largest inland city.",
    "| year | revenue (USD m) | margin |\n| 2019 | 1,204.5 | 12.1% |\n| 2020 | 987.0 | 9.4% |",
    "key 9f1c2e7a-3b44-4d0e-9a65-0c7f2b1d8e33 maps to value 5e0d9c21-77aa-4f1b-8c2d-3a9e6b4f1c07",
    "Die Hauptstadt Australiens ist Canberra; 東京は日本の首都です。",
    " ".join(["The committee reviewed the annual report, noted the decline in membership, and resolved to "
              "hold the next general meeting in the spring, after the accounts have been audited."] * 6),
]


def mean_pooling_only(source: Path) -> bool:
    """Whether the sentence-transformers model at `source` is Transformer -> mean Pooling (-> Normalize)."""
    try:
        modules = json.loads((source / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((source / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    return kinds[:2] == ["Transformer", "Pooling"] and set(kinds[2:]) <= {"Normalize"} and \
        modes == {"pooling_mode_mean_tokens"} and (source / "tokenizer.json").exists()


def agreement(fast: Any, model: Any) -> float:
    """The lowest cosine between `fast`'s vectors and the loaded SentenceTransformer `model`'s on CHECK_TEXTS
    (embedded together, so padded, and the first alone)."""
    expected = np.asarray(model.encode(CHECK_TEXTS, normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False), dtype=np.float32)
    got = np.concatenate([fast.embed(CHECK_TEXTS), fast.embed(CHECK_TEXTS[:1])])
    cosines = np.sum(got[: len(CHECK_TEXTS)] * expected, axis=1).tolist() + [float(got[-1] @ expected[0])]
    return float(min(cosines))


def write_verdict(cache: Path, work: Path, min_cosine: float, **details: Any) -> bool:
    """Record (atomically, via `work` in the same file system) whether a fast path agreed; True if it did."""
    ok = min_cosine >= MIN_COSINE
    verdict = {"ok": ok, "min_cosine": round(min_cosine, 6), "texts": len(CHECK_TEXTS), **details}
    (work / "check.json").write_text(json.dumps(verdict, indent=2))
    os.replace(work / "check.json", cache / "check.json")
    return ok


def read_verdict(cache: Path) -> dict[str, Any] | None:
    """The recorded check in `cache`, or None if none was made (or it cannot be read)."""
    try:
        verdict = json.loads((cache / "check.json").read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) else None
