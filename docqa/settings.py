"""One settings object for docqa, with the defaults the library and the command line share.

The library takes Settings as given; the command line fills them from flags and environment variables
(docqa.cli.config)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_COLLECTION = "docqa"


def default_store_dir() -> Path:
    """Where the store lives when neither --store nor DOCQA_STORE says: the per-user data dir."""
    return Path(platformdirs.user_data_dir("docqa", appauthor=False)) / "store"


@dataclass(frozen=True)
class Settings:
    """Everything a docqa command needs to know; every field has a flag and most an env var."""

    store_dir: Path
    collection: str = DEFAULT_COLLECTION
    chroma_url: str | None = None  # a Chroma server (`chroma run`) instead of the local store
    # Seconds to wait for any one reply of that server before calling it lost. A 128-chunk upsert (one ingest
    # write at the default batch size) took 0.27 s (median; at most 0.83 s) into a collection growing to 100k
    # chunks, the largest upsert a server accepts (5,461 vectors) 12 s, on a busy 2-core machine
    # (reliability.json, "server_faults"); the first call after a restart ~9 s. See docqa.archive.chroma.
    chroma_timeout: float = 60.0
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embedding_backend: str = "torch"  # "torch" (sentence-transformers) or "static" (model2vec)
    chunk_tokens: int = 200  # chunk size in the embedding model's own tokens
    overlap_tokens: int = 40
    batch_size: int = 32  # embedding batch size
    file_timeout: float = 300.0  # CPU seconds one file may spend being hashed, read and chunked (0: no limit)
    page_size: int = 5  # results per search page, as in MemGPT
    search_depth: int = 200  # how deep each ranking goes; pages cover exactly this fused ranking
    # Re-rank this many top results with the full transformer at query time (dense and hybrid search).
    # None: 50 with the static backend (it restores most of the transformer's recall), 0 (off) with torch.
    rerank_depth: int | None = None
    # LLM
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    llm_mode: str = "auto"  # "auto" | "tools" | "json"
    fold_system: bool = False  # system text into the first user message, for templates with no system role
    context_window: int = 8192
    max_steps: int = 20
    llm_timeout: float = 120.0

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
