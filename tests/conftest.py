"""Shared fixtures: every test gets its own empty store; the embedding model loads once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from docqa.cli.process import configure_process

configure_process()  # as the `docqa` command does, before anything imports torch


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point docqa at a fresh store, whatever the developer's environment says."""
    monkeypatch.setenv("DOCQA_STORE", str(tmp_path / "store"))
    for var in ("DOCQA_CHROMA_URL", "DOCQA_CHROMA_TIMEOUT", "DOCQA_COLLECTION", "DOCQA_EMBEDDING_MODEL",
                "DOCQA_EMBEDDING_BACKEND"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The default embedder; load_embedder caches it, so in-process CLI runs reuse this one."""
    from docqa.embeddings.load import load_embedder

    return load_embedder()
