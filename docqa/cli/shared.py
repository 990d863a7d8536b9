"""What `docqa` and `docqa bench` share: one-line errors instead of tracebacks, and the LLM options.

A module of its own because docqa.cli registers docqa.bench.cli: the bench commands cannot import the
decorators from docqa.cli while it is still being imported.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from docqa.cli.config import resolve
from docqa.errors import DocqaError
from docqa.settings import Settings

if TYPE_CHECKING:
    from docqa.api import Store

Command = Callable[..., Any]


class UserError(DocqaError):
    """An error the user can fix; printed as one line, exit code 1."""


def friendly(command: Command) -> Command:
    """Turn errors into one clear line on stderr instead of a traceback (DOCQA_DEBUG=1 shows it)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            if sys.stderr.isatty():
                click.echo("\r\033[K", nl=False, err=True)  # the line the terminal echoed "^C" on
            click.echo("docqa: interrupted; nothing half-written is visible (re-running an interrupted ingest "
                       "reuses the chunks it stored)", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("DOCQA_DEBUG"):
                raise
            if isinstance(exc, DocqaError):
                click.echo(f"docqa: error: {exc}", err=True)
            else:
                click.echo(f"docqa: unexpected error: {type(exc).__name__}: {exc} "
                           "(set DOCQA_DEBUG=1 for a traceback and please report it)", err=True)
            sys.exit(1)

    return wrapper


def with_options(command: Command, options: Iterable[Callable[[Command], Command]]) -> Command:
    """Apply click options so that --help lists them in the order given."""
    for option in reversed(list(options)):
        command = option(command)
    return command


# Each LLM option once: (flag, click.option keywords). Commands pick some and may word the help for
# their own use (the bench's --model only serves --mode agent/baseline).
LLM_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "model": ("--model", dict(help="Chat model name [env DOCQA_MODEL].")),
    "base_url": ("--base-url", dict(
        help="OpenAI-compatible API base URL, e.g. http://localhost:8000/v1 for vLLM, "
        "http://localhost:11434/v1 for Ollama [env OPENAI_BASE_URL; default OpenAI].")),
    "api_key": ("--api-key", dict(help="API key [env OPENAI_API_KEY; a local --base-url needs none].")),
    "llm_mode": ("--llm-mode", dict(
        type=click.Choice(["auto", "tools", "json"]),
        help="tools: native tool calling; json: the model writes function calls as JSON; "
        "auto: tools, switching to json if the server rejects tools [env DOCQA_LLM_MODE].")),
    "fold_system": ("--fold-system", dict(
        is_flag=True, default=None,
        help="Put the system instructions into the first user message, for chat templates that have no system "
        "role (Mistral's) [env DOCQA_FOLD_SYSTEM].")),
    "context_window": ("--context-window", dict(
        type=click.IntRange(min=512),
        help="The model's context window in tokens; the smaller of this and what the server says it serves is "
        "used [env DOCQA_CONTEXT_WINDOW; default 8192].")),
    "max_steps": ("--max-steps", dict(type=click.IntRange(min=1), help="LLM calls allowed per question (default 20).")),
    "llm_timeout": ("--llm-timeout", dict(type=float, help="Seconds to wait for one LLM reply (default 120).")),
}


def llm_options(names: Iterable[str] = tuple(LLM_OPTIONS),
                reworded: Mapping[str, str] | None = None) -> Callable[[Command], Command]:
    """A decorator adding the options that say which OpenAI-compatible LLM to talk to.

    `names` picks options of LLM_OPTIONS, listed in that order; `reworded` gives some a command's own help.
    """
    chosen, reworded = list(names), dict(reworded or {})
    unknown = (set(chosen) - set(LLM_OPTIONS)) | (set(reworded) - set(chosen))
    if unknown:
        raise ValueError(f"not LLM options of this command: {sorted(unknown)}")

    def option(name: str) -> Callable[[Command], Command]:
        flag, keywords = LLM_OPTIONS[name]
        if name in reworded:
            keywords = {**keywords, "help": reworded[name]}
        return click.option(flag, **keywords)

    options = [option(name) for name in chosen]
    return lambda command: with_options(command, options)


# -- the store ------------------------------------------------------------------------------------
def store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options that say which store to use, shared by every command that touches one."""
    options = [
        click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Store directory [env DOCQA_STORE; default: per-user data dir]."),
        click.option("--collection", help="Collection name inside the store [env DOCQA_COLLECTION; default docqa]."),
        click.option("--chroma-url", help="Use a Chroma server (chroma run) at this URL instead of a local store "
                     "[env DOCQA_CHROMA_URL]; docqa waits up to 60 s for each of its replies "
                     "[env DOCQA_CHROMA_TIMEOUT]."),
        click.option("--embedding-model", help="sentence-transformers model name or local path "
                     "[env DOCQA_EMBEDDING_MODEL; default all-MiniLM-L6-v2 from its PyPI package]."),
        click.option("--embedding-backend", type=click.Choice(["torch", "static"]),
                     help="torch: the model itself; static: a model2vec model distilled from it, much faster, "
                     "less accurate [env DOCQA_EMBEDDING_BACKEND]."),
    ]
    return with_options(command, options)


def build_settings(**flags: Any) -> Settings:
    return resolve(**flags)


def open_store(config: Settings) -> Store:
    """The store these settings name, through the library's API (docqa.api.Store): the command is a layer over it."""
    from docqa.api import Store

    return Store(config)


def open_existing_store(config: Settings) -> Store:
    """The store for a command that only reads (search, list, ask, chat, delete): never creates one."""
    from docqa.archive.records import check_collection_name

    check_collection_name(config.collection)
    if not config.chroma_url:
        catalog = config.store_dir / f"{config.collection}.catalog.sqlite3"
        if not config.store_dir.is_dir():
            raise UserError(f"no store at {config.store_dir}; run docqa ingest first (or pass --store DIR)")
        if not catalog.exists():
            from docqa.archive.health import REPAIR, chroma_population

            held = chroma_population(config.store_dir / "chroma", config.collection)
            if held:
                raise UserError(f"the catalog {catalog} is missing but Chroma beside it holds {held} chunks of "
                                f"collection '{config.collection}': {REPAIR} to rebuild it from Chroma")
            raise UserError(f"no collection '{config.collection}' in the store at {config.store_dir}; run docqa "
                            f"ingest --collection {config.collection} first")
    return open_store(config)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def session_store(config: Settings) -> Any:
    """The chat sessions of this store (core memory, summary, queue and recall of each)."""
    from docqa.agent.memory import SessionStore

    return SessionStore(config.store_dir / "sessions.sqlite3")
