"""The cache of what docqa makes from an installed model (the static model, the query paths' checks, the ONNX
export), keyed by it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import platformdirs

_root: Path | None = None  # see use_cache_dir


def use_cache_dir(path: Path | None) -> None:
    """Keep docqa's model cache in `path` (None: the per-user cache directory). The `docqa` command sets it from
    DOCQA_CACHE_DIR; the library reads no environment variable."""
    global _root
    _root = path


def cache_root() -> Path:
    return _root or Path(platformdirs.user_cache_dir("docqa", appauthor=False))


def keyed_cache_dir(kind: str, source: Path, recipe: dict[str, Any]) -> Path:
    """A cache directory for something made from the model at `source` (the static model, a check, an export),
    keyed by the source's path, its weights files and the recipe."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(str(source.resolve()).encode())
    for weights in sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / kind / digest.hexdigest()[:16]
