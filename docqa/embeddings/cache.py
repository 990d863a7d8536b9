"""The cache of what docqa makes from an installed model (the static model, the ONNX export), keyed by it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs


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
