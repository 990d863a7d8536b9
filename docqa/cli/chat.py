"""`docqa chat` (the multi-turn REPL) and `docqa sessions` (list and delete saved sessions)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from docqa.cli.agent_io import NO_LLM_HELP, connect, format_answer, has_llm, no_trace, print_trace
from docqa.cli.shared import (
    UserError,
    build_settings,
    emit_json,
    friendly,
    llm_options,
    open_existing_store,
    session_store,
    store_options,
)

CHAT_HELP = """Commands:
  /help           this help
  /memory         show core memory (what the agent keeps about you and itself)
  /exit, /quit    leave (Ctrl-D too); the session's memory is saved after every turn
Anything else is a message to the agent."""
HISTORY_LINES = 1000


@click.command()
@store_options
@llm_options()
@click.option("--session", default="default", show_default=True, help="Conversation to continue (memory persists).")
@click.option("--trace", is_flag=True, help="Print each step: inner thoughts, function calls, results.")
@friendly
def chat(session: str, trace: bool, **flags: Any) -> None:
    """Talk with the agent over several turns; its memory persists across runs (/help for commands).

    Exit code 0 when every turn was answered, 1 when any turn failed or hit the step limit.
    """
    from docqa.agent.loop import Agent

    config = build_settings(**flags)
    if not has_llm(config):
        raise UserError(NO_LLM_HELP.split(" Showing")[0])
    store = open_existing_store(config)
    on_event = print_trace if trace else no_trace
    client, config = connect(config, on_event)
    agent = Agent(config, store.archive, client, session=session, sessions=session_store(config),
                  on_event=on_event)
    interactive = sys.stdin.isatty()
    if interactive:
        _line_editing(config.store_dir / "chat_history")
    resumed = len(agent.context.queue)
    state = f"resumed: {resumed} messages" if resumed else "new session"
    click.echo(f"docqa chat, session '{session}' ({state}; {store.count()} chunks in archival memory). "
               "/help for commands, /exit to leave.", err=True)
    failed = 0
    while True:
        try:
            line = input("you> " if interactive else "")  # piped input gets no prompt glued to the answers
        except EOFError:
            break
        except KeyboardInterrupt:
            click.echo("", err=True)
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/help":
            click.echo(CHAT_HELP)
            continue
        if command == "/memory":
            click.echo(agent.context.core.render())
            continue
        if command.startswith("/") and " " not in command:
            click.echo(f"docqa: unknown command {command}; /help lists them", err=True)
            continue
        if not command:
            continue
        with _thinking(enabled=sys.stderr.isatty() and not trace):
            result = agent.turn(line)
        if result.status == "answered":
            click.echo(f"docqa> {format_answer(result)}")
            continue
        failed += 1
        if result.status == "step_limit":
            click.echo(f"docqa: no answer within {config.max_steps} steps (--max-steps); try --trace to see why",
                       err=True)
        else:
            click.echo(f"docqa: error: {result.error}", err=True)
    sys.exit(1 if failed else 0)


def _line_editing(history: Path) -> None:
    """Line editing and a persistent history for input(), where the platform has readline."""
    try:
        import atexit
        import readline
    except ImportError:
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(HISTORY_LINES)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(history)

    atexit.register(save)


@contextlib.contextmanager
def _thinking(enabled: bool) -> Iterator[None]:
    """A "thinking… 3 s" line on the terminal while a turn runs, erased when it ends."""
    if not enabled:
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(0.5):
            sys.stderr.write(f"\r\x1b[2Kthinking… {time.monotonic() - started:.0f} s")
            sys.stderr.flush()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        sys.stderr.write("\r\x1b[2K")
        sys.stderr.flush()


@click.command()
@store_options
@click.option("--delete", "names", multiple=True, metavar="NAME", help="Forget this session (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def sessions(names: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """List the saved chat sessions, or forget some with --delete NAME."""
    config = build_settings(**{k: v for k, v in flags.items() if k == "store_dir"})
    saved = session_store(config) if (config.store_dir / "sessions.sqlite3").exists() else None
    if names:
        missing = [name for name in names if saved is None or not saved.delete(name)]
        if as_json:
            emit_json({"deleted": [n for n in names if n not in missing], "not_found": missing})
        for name in names:
            if name not in missing and not as_json:
                click.echo(f"deleted session: {name}")
        for name in missing:
            click.echo(f"docqa: no session named '{name}' (docqa sessions lists them)", err=True)
        sys.exit(1 if missing else 0)
    found = saved.sessions() if saved is not None else []
    if as_json:
        emit_json([{"name": s.name, "messages_in_context": s.queued, "messages_in_recall": s.recalled,
                    "updated": datetime.fromtimestamp(s.updated).isoformat(timespec="seconds")} for s in found])
        return
    for s in found:
        when = datetime.fromtimestamp(s.updated).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{s.name}  (last used {when}; {s.queued} messages in context, {s.recalled} in recall storage)")
    click.echo(f"{len(found)} session(s)")
