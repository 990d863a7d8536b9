"""`docqa ask`: one question to the agent, or, with no LLM, the best passages with their sources."""

from __future__ import annotations

import sys
from typing import Any

import click

from docqa.cli.agent_io import NO_LLM_HELP, connect, format_answer, has_llm, no_trace, print_trace
from docqa.cli.shared import (
    build_settings,
    emit_json,
    friendly,
    llm_options,
    open_existing_store,
    store_options,
)


@click.command()
@click.argument("question")
@store_options
@llm_options()
@click.option("--session", help="Use (and update) the memory of this chat session.")
@click.option("--trace", is_flag=True, help="Print each step: inner thoughts, function calls, results.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result.")
@click.option("--no-llm", is_flag=True, help="Do not call an LLM: print the top archival search results.")
@friendly
def ask(question: str, session: str | None, trace: bool, as_json: bool, no_llm: bool, **flags: Any) -> None:
    """Answer QUESTION from archival memory, citing sources and pages.

    Exit code 0 when answered (or with --no-llm), 1 when the step limit was hit or the LLM failed.
    """
    from docqa.agent.result import AgentResult

    config = build_settings(**flags)
    store = open_existing_store(config)
    if no_llm or not has_llm(config):
        if not no_llm:
            click.echo(f"docqa: {NO_LLM_HELP}", err=True)
        page = store.search(question)
        result = AgentResult(answer="", status="no_llm", citations=[
            {"source": h.record.source, "page": h.record.page_start, "page_end": h.record.page_end,
             "section": h.record.section, "chunk": h.record.chunk, "text": h.record.text} for h in page.hits])
        if as_json:
            emit_json(result.to_json())
        else:
            click.echo(page.format())
        return
    on_event = print_trace if trace else no_trace
    client, config = connect(config, on_event)
    result = store.ask(question, client=client, context_window=config.context_window, max_steps=config.max_steps,
                       session=session, on_event=on_event)
    if as_json:
        emit_json(result.to_json())
    elif result.status == "answered":
        click.echo(format_answer(result))
    elif result.status == "step_limit":
        click.echo(f"docqa: no answer within {config.max_steps} steps (--max-steps); try --trace to see why",
                   err=True)
    else:
        click.echo(f"docqa: error: {result.error}", err=True)
    sys.exit(0 if result.status == "answered" else 1)
