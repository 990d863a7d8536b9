"""What the commands that talk to an LLM share: connecting to the server (its model and its window),
the --trace printer, and an answer with its sources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from docqa.cli.evidence import evidence_excerpt
from docqa.cli.shared import UserError
from docqa.settings import Settings

NO_LLM_HELP = ("no LLM configured. Set DOCQA_MODEL and OPENAI_API_KEY (OpenAI), or OPENAI_BASE_URL (and "
               "DOCQA_MODEL if the server serves several models) for a local OpenAI-compatible server (vLLM, "
               "Ollama, llama.cpp, LM Studio), or pass --model/--base-url. Showing the top archival search "
               "results instead.")
PROBE_SECONDS = 5.0  # at most, for asking the server its models and window

Event = Callable[[str, dict[str, Any]], None]


def has_llm(config: Settings) -> bool:
    return bool(config.model or config.base_url)


def connect(config: Settings, on_event: Event) -> tuple[Any, Settings]:
    """The chat client, and the settings with the model and window the server actually serves.

    With --base-url, the server is asked what it serves (GET /v1/models, and the window wherever vLLM,
    llama.cpp, Ollama or LM Studio say it): without --model its only model is used, and the window is the
    smaller of --context-window and the server's.
    """
    from docqa.agent.llm import ChatClient

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
                raise UserError(str(exc)) from None
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
        click.echo(f"docqa: note: {notice}", err=True)
    for note in notes:
        on_event("server", {"message": client.scrub(note)})
    return client, config.with_(model=model)


def print_trace(kind: str, data: dict[str, Any]) -> None:
    """--trace: each step as it happens, like the paper's Figures 6 and 8."""
    if kind == "thought":
        click.secho(f"  thought: {data['text'].strip()}", fg="cyan", err=True)
    elif kind == "call":
        click.secho(f"  call: {data['function']}({data['arguments'][:300]})", fg="yellow", err=True)
    elif kind == "result":
        text = " ".join(data["result"].split())
        click.secho(f"  result: {text[:240]}{'...' if len(text) > 240 else ''}", fg="green" if data["ok"] else "red",
                    err=True)
    elif kind in ("request", "server"):
        click.secho(f"  [{'llm' if kind == 'request' else 'server'}] {data['message']}", dim=True, err=True)
    else:
        click.secho(f"  [{kind}] {' '.join(str(data.get('message', '')).split())[:400]}", fg="magenta", err=True)


def no_trace(kind: str, data: dict[str, Any]) -> None:
    """Without --trace only a wait for a busy session is worth a line."""
    if kind == "system" and "waiting" in str(data.get("message", "")):
        click.echo(f"docqa: {data['message']}", err=True)


def format_answer(result: Any) -> str:
    lines = [result.answer or "(no answer)"]
    if result.citations:
        lines.append("\nSources:")
        for n, c in enumerate(result.citations, start=1):
            page = c["page"] if c["page"] == c.get("page_end", c["page"]) else f"{c['page']}-{c['page_end']}"
            where = f"page {page}"
            if c.get("section"):
                from docqa.readers import location

                where = location(c["source"], c["page"], c.get("page_end", c["page"]), c["section"])
            lines.append(f"[{n}] {c['source']}, {where}: \"{evidence_excerpt(c['text'], result.answer or '')}\"")
    return "\n".join(lines)
