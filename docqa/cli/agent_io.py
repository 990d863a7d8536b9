"""What the commands that talk to an LLM share: connecting to the server (its model and its window),
the --trace printer, and an answer with its sources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from docqa.cli.evidence import evidence_excerpt
from docqa.settings import Settings

NO_LLM_HELP = ("no LLM configured. Set DOCQA_MODEL and OPENAI_API_KEY (OpenAI), or OPENAI_BASE_URL (and "
               "DOCQA_MODEL if the server serves several models) for a local OpenAI-compatible server (vLLM, "
               "Ollama, llama.cpp, LM Studio), or pass --model/--base-url. Showing the top archival search "
               "results instead.")

Event = Callable[[str, dict[str, Any]], None]


def has_llm(config: Settings) -> bool:
    return bool(config.model or config.base_url)


def connect(config: Settings, on_event: Event) -> tuple[Any, Settings]:
    """The chat client, and the settings with the model and window the server serves (docqa.agent.connect)."""
    from docqa.agent.connect import connect as connect_client

    return connect_client(config, on_event, on_notice=lambda text: click.echo(f"docqa: note: {text}", err=True))


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
