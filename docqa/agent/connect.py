"""Connecting to an OpenAI-compatible server: the model it serves and the window it runs, then the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from docqa.agent.llm import ChatClient
from docqa.agent.replies import LLMError
from docqa.settings import Settings

PROBE_SECONDS = 5.0  # at most, for asking the server its models and window

Event = Callable[[str, dict[str, Any]], None]


def connect(config: Settings, on_event: Event | None = None,
            on_notice: Callable[[str], None] | None = None) -> tuple[ChatClient, Settings]:
    """The chat client, and the settings with the model and window the server actually serves.

    With --base-url, the server is asked what it serves (GET /v1/models, and the window wherever vLLM,
    llama.cpp, Ollama or LM Studio say it): without --model its only model is used, and the window is the
    smaller of --context-window and the server's. `on_event("server", {"message": ...})` gets a note per thing
    learnt (for --trace), `on_notice` what the user should know about how requests are sent.
    """
    notes: list[str] = []
    model = config.model
    if config.base_url:
        from docqa.agent.server_info import ServerInfoError, choose_model, probe_server

        info = probe_server(config.base_url, model, config.api_key, timeout=min(PROBE_SECONDS, config.llm_timeout))
        notes += info.notes
        if not model:
            try:
                model = choose_model(info, config.base_url)
            except ServerInfoError as exc:
                raise LLMError(str(exc)) from None
            notes.append(f"model: {model}, the only one the server lists (--model picks another)")
        window = config.context_window
        if info.context_window and info.context_window < window:
            config = config.with_(context_window=info.context_window)
            notes.append(f"context window: {info.context_window:,} tokens, from the server ({info.window_source}); "
                         f"--context-window is {window:,}")
        elif info.context_window:
            notes.append(f"context window: {window:,} tokens (--context-window); the server serves "
                         f"{info.context_window:,} ({info.window_source})")
        else:
            notes.append(f"context window: {window:,} tokens (--context-window); the server did not say its own")
    client = ChatClient(model or "", base_url=config.base_url, api_key=config.api_key, mode=config.llm_mode,
                        timeout=config.llm_timeout, fold_system=config.fold_system)
    for notice in client.notices:
        if on_notice is not None:
            on_notice(notice)
    for note in notes:
        if on_event is not None:
            on_event("server", {"message": client.scrub(note)})
    return client, config.with_(model=model)
