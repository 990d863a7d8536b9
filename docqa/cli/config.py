"""The command line's settings: flag, then environment variable, then default, resolved in one place."""

from __future__ import annotations

import os
from pathlib import Path

from docqa.errors import DocqaError
from docqa.settings import Settings, default_store_dir


def resolve(**flags: object) -> Settings:
    """Build Settings from command-line flags (None = not given), then env vars, then defaults."""
    env = os.environ

    def pick(flag: str, var: str | None, default: object) -> object:
        value = flags.get(flag)
        if value is not None:
            return value
        if var and env.get(var):
            return env[var]
        return default

    store = pick("store_dir", "DOCQA_STORE", None)
    base = Settings(store_dir=Path(store).expanduser() if store else default_store_dir())
    return base.with_(
        collection=pick("collection", "DOCQA_COLLECTION", base.collection),
        chroma_url=pick("chroma_url", "DOCQA_CHROMA_URL", None),
        chroma_timeout=_seconds("DOCQA_CHROMA_TIMEOUT", pick("chroma_timeout", "DOCQA_CHROMA_TIMEOUT",
                                                             base.chroma_timeout)),
        embedding_model=pick("embedding_model", "DOCQA_EMBEDDING_MODEL", base.embedding_model),
        embedding_backend=pick("embedding_backend", "DOCQA_EMBEDDING_BACKEND", base.embedding_backend),
        chunk_tokens=int(pick("chunk_tokens", None, base.chunk_tokens)),  # type: ignore[arg-type]
        overlap_tokens=int(pick("overlap_tokens", None, base.overlap_tokens)),  # type: ignore[arg-type]
        batch_size=int(pick("batch_size", None, base.batch_size)),  # type: ignore[arg-type]
        file_timeout=float(pick("file_timeout", "DOCQA_FILE_TIMEOUT", base.file_timeout)),  # type: ignore[arg-type]
        page_size=int(pick("page_size", None, base.page_size)),  # type: ignore[arg-type]
        search_depth=int(pick("search_depth", None, base.search_depth)),  # type: ignore[arg-type]
        rerank_depth=_optional_int(pick("rerank_depth", "DOCQA_RERANK_DEPTH", None)),
        model=pick("model", "DOCQA_MODEL", None),
        base_url=pick("base_url", "OPENAI_BASE_URL", None),
        api_key=pick("api_key", "OPENAI_API_KEY", None),
        llm_mode=pick("llm_mode", "DOCQA_LLM_MODE", base.llm_mode),
        fold_system=_flag(pick("fold_system", "DOCQA_FOLD_SYSTEM", base.fold_system)),
        context_window=int(pick("context_window", "DOCQA_CONTEXT_WINDOW", base.context_window)),  # type: ignore[arg-type]
        max_steps=int(pick("max_steps", None, base.max_steps)),  # type: ignore[arg-type]
        llm_timeout=float(pick("llm_timeout", None, base.llm_timeout)),  # type: ignore[arg-type]
    )


def _seconds(name: str, value: object) -> float:
    """A time limit given as text (an environment variable): a number of seconds above 0."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise DocqaError(f"{name} must be a number of seconds above 0, not '{value}'")
    return seconds


def _flag(value: object) -> bool:
    """A boolean flag or an environment variable's text (1/true/yes/on)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _optional_int(value: object) -> int | None:
    return None if value is None or value == "" else int(value)  # type: ignore[call-overload]
