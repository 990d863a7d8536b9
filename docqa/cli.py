"""The `docqa` command: each command parses options, builds Settings and calls the core."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from docqa import settings as settings_module
from docqa.settings import Settings


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 1."""


def _user_errors() -> tuple[type[Exception], ...]:
    from docqa.embeddings import EmbeddingError
    from docqa.store import StoreError

    errors: list[type[Exception]] = [UserError, StoreError, EmbeddingError]
    try:
        from docqa.llm import LLMError

        errors.append(LLMError)
    except ImportError:
        pass
    return tuple(errors)


def friendly(command: Callable[..., Any]) -> Callable[..., Any]:
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
            click.echo("docqa: interrupted; nothing half-written was kept", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("DOCQA_DEBUG"):
                raise
            if isinstance(exc, _user_errors()):
                click.echo(f"docqa: error: {exc}", err=True)
            else:
                click.echo(f"docqa: unexpected error: {type(exc).__name__}: {exc} "
                           "(set DOCQA_DEBUG=1 for a traceback and please report it)", err=True)
            sys.exit(1)

    return wrapper


def store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options that say which store to use, shared by every command that touches one."""
    options = [
        click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Store directory [env DOCQA_STORE; default: per-user data dir]."),
        click.option("--collection", help="Collection name inside the store [env DOCQA_COLLECTION; default docqa]."),
        click.option("--chroma-url", help="Use a Chroma server (chroma run) at this URL instead of a local store "
                     "[env DOCQA_CHROMA_URL]."),
        click.option("--embedding-model", help="sentence-transformers model name or local path "
                     "[env DOCQA_EMBEDDING_MODEL; default all-MiniLM-L6-v2 from its PyPI package]."),
        click.option("--embedding-backend", type=click.Choice(["torch", "static"]),
                     help="torch: the model itself; static: a model2vec model distilled from it, much faster, "
                     "less accurate [env DOCQA_EMBEDDING_BACKEND]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_settings(**flags: Any) -> Settings:
    return settings_module.resolve(**flags)


def open_store(config: Settings) -> Any:
    from docqa.store import ArchivalStore

    return ArchivalStore(config)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="docqa")
def main() -> None:
    """Ask questions about documents far larger than an LLM's context window.

    Documents go into archival memory (docqa ingest); an LLM agent pages through it with function
    calls to answer questions (docqa ask, docqa chat), as in the MemGPT paper.
    """


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_options
@click.option("--chunk-tokens", type=int, help="Chunk size in embedding-model tokens (default 200, max 254 for MiniLM).")
@click.option("--overlap", "overlap_tokens", type=int, help="Tokens shared by neighbouring chunks (default 40).")
@click.option("--batch-size", type=int, help="Embedding batch size (default 32).")
@click.option("--delete", "delete", is_flag=True, help="Remove these documents from the store instead.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of text.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@friendly
def ingest(paths: tuple[Path, ...], delete: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Add PDF, text and markdown files (directories recursively) to archival memory.

    Re-ingesting an unchanged file adds nothing; a changed file replaces its old chunks. Exit code 0 when
    every file went in, 1 when any failed (the others are still stored), 2 for usage errors.
    """
    if delete:
        _delete(paths, as_json, flags)
        return
    from docqa.chunking import check_sizes
    from docqa.ingest import Ingestor

    config = build_settings(**flags)
    store = open_store(config)
    problem = check_sizes(config.chunk_tokens, config.overlap_tokens, store.embedder.max_tokens)
    if problem:
        raise click.UsageError(problem)
    from tqdm import tqdm

    def notice(message: str) -> None:
        tqdm.write(message, file=sys.stderr)  # keeps the progress bars intact
    report = Ingestor(store, progress=not (quiet or as_json), notice=notice).run(paths)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(report.summary())
    sys.exit(1 if report.files_failed else 0)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def delete(paths: tuple[Path, ...], as_json: bool, **flags: Any) -> None:
    """Remove documents (or every document under a directory) from archival memory."""
    _delete(paths, as_json, flags)


def _delete(paths: tuple[Path, ...], as_json: bool, flags: dict[str, Any]) -> None:
    from docqa.ingest import delete_paths

    flags = {k: v for k, v in flags.items() if k in ("store_dir", "collection", "chroma_url", "embedding_model",
                                                      "embedding_backend")}
    store = open_store(build_settings(**flags))
    removed, missing = delete_paths(store, paths)
    if as_json:
        emit_json({"removed": removed, "not_found": missing, "chunks_total": store.count()})
    else:
        for source in removed:
            click.echo(f"removed: {source}")
        for path in missing:
            click.echo(f"not in the store: {path}", err=True)
    sys.exit(1 if missing else 0)


@main.command(name="list")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def list_documents(as_json: bool, **flags: Any) -> None:
    """List the documents in archival memory."""
    store = open_store(build_settings(**flags))
    docs = store.documents()
    if as_json:
        emit_json([{"source": d.source, "pages": d.pages, "chunks": d.chunks, "sha256": d.file_hash} for d in docs])
        return
    for d in docs:
        click.echo(f"{d.source}  ({d.pages} pages, {d.chunks} chunks)")
    click.echo(f"{len(docs)} document(s), {store.count()} chunks")


@main.command()
@click.argument("query")
@store_options
@click.option("--page", type=click.IntRange(min=0), default=0, show_default=True, help="Page of results, 0-based.")
@click.option("--page-size", type=click.IntRange(min=1, max=100), help="Results per page (default 5).")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid", show_default=True,
              help="hybrid fuses meaning (dense) and exact words (lexical).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def search(query: str, page: int, page_size: int | None, mode: str, as_json: bool, **flags: Any) -> None:
    """Search archival memory, one page at a time: the agent's archival_memory_search."""
    store = open_store(build_settings(page_size=page_size, **flags))
    result = store.search(query, page=page, mode=mode)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.format())
