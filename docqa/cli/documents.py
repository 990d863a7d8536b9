"""The commands on archival memory itself: ingest, delete, list and search."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from docqa.cli.shared import build_settings, emit_json, friendly, open_existing_store, open_store, store_options


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_options
@click.option("--chunk-tokens", type=click.IntRange(min=8),
              help="Chunk size in embedding-model tokens (default 200, max 254 for MiniLM).")
@click.option("--overlap", "overlap_tokens", type=click.IntRange(min=0),
              help="Tokens shared by neighbouring chunks (default 40; less than half of --chunk-tokens).")
@click.option("--batch-size", type=click.IntRange(min=1, max=4096), help="Embedding batch size (default 32).")
@click.option("--file-timeout", type=click.FloatRange(min=0),
              help="Give up on a file whose hashing, or reading and chunking, use more than this many CPU "
              "seconds (a damaged or hostile file); time spent waiting on a busy machine does not count. "
              "Default 300, 0 = no limit [env DOCQA_FILE_TIMEOUT].")
@click.option("--delete", "delete", is_flag=True, help="Remove these documents from the store instead.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of text.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (they are shown only on a terminal).")
@friendly
def ingest(paths: tuple[Path, ...], delete: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Add PDF, text and markdown files (directories recursively) to archival memory.

    Re-ingesting an unchanged file with the same --chunk-tokens, --overlap and embedding model adds nothing;
    a changed file, or other settings, replaces its old chunks. Exit code 0 when
    every file went in, 1 when any failed (the others are still stored), 2 for usage errors.
    """
    if delete:
        _delete(paths, as_json, flags)
        return
    from docqa.chunking import check_sizes
    from docqa.embeddings.transformer import model_limit

    config = build_settings(**flags)
    # Sizes are checked against the model's config files before anything is loaded or created.
    limit = model_limit(config.embedding_model)
    problem = check_sizes(config.chunk_tokens, config.overlap_tokens, limit if limit is not None else 1 << 30)
    if problem:
        raise click.UsageError(problem)
    store = open_store(config)
    if limit is None:  # a model whose limit its files do not tell: ask the loaded model
        problem = check_sizes(config.chunk_tokens, config.overlap_tokens, store.archive.embedder.max_tokens)
        if problem:
            raise click.UsageError(problem)
    from tqdm import tqdm

    def notice(message: str) -> None:
        tqdm.write(message, file=sys.stderr)  # keeps the progress bar intact

    # Bars redraw in place with cursor moves: in a log file or a pipe they are only noise.
    progress = not (quiet or as_json) and sys.stderr.isatty()

    def status(message: str) -> None:
        if progress:  # one transient line, erased when done ("" clears it)
            sys.stderr.write(f"\r\x1b[K{message}")
            sys.stderr.flush()

    report = store.ingest(paths, on_notice=notice, progress=progress, on_status=status)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(report.summary())
    if report.error:
        click.echo(f"docqa: error: {report.error}", err=True)
    sys.exit(1 if report.files_failed or report.error else 0)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def delete(paths: tuple[Path, ...], as_json: bool, **flags: Any) -> None:
    """Remove documents (or every document under a directory) from archival memory."""
    _delete(paths, as_json, flags)


def _delete(paths: tuple[Path, ...], as_json: bool, flags: dict[str, Any]) -> None:
    flags = {k: v for k, v in flags.items() if k in ("store_dir", "collection", "chroma_url", "embedding_model",
                                                      "embedding_backend")}
    store = open_existing_store(build_settings(**flags))
    removed, missing = store.delete(paths)
    if as_json:
        emit_json({"removed": removed, "not_found": missing, "chunks_total": store.count()})
    else:
        for source in removed:
            click.echo(f"removed: {source}")
        for path in missing:
            click.echo(f"not in the store: {path}", err=True)
    sys.exit(1 if missing else 0)


@click.command(name="list")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def list_documents(as_json: bool, **flags: Any) -> None:
    """List the documents in archival memory."""
    store = open_existing_store(build_settings(**flags))
    docs = store.documents()
    if as_json:
        emit_json([{"source": d.source, "pages": d.pages, "chunks": d.chunks, "sha256": d.file_hash} for d in docs])
        return
    for d in docs:
        click.echo(f"{d.source}  ({d.pages} pages, {d.chunks} chunks)")
    click.echo(f"{len(docs)} document(s), {store.count()} chunks")


@click.command()
@click.argument("query")
@store_options
@click.option("--page", type=click.IntRange(min=0), default=0, show_default=True, help="Page of results, 0-based.")
@click.option("--page-size", type=click.IntRange(min=1, max=100), help="Results per page (default 5).")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid", show_default=True,
              help="hybrid fuses meaning (dense) and exact words (lexical).")
@click.option("--scores", is_flag=True, help="Show each result's score (JSON output always has them).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def search(query: str, page: int, page_size: int | None, mode: str, scores: bool, as_json: bool,
           **flags: Any) -> None:
    """Search archival memory, one page at a time: the agent's archival_memory_search."""
    config = build_settings(page_size=page_size, **flags)
    store = open_existing_store(config)
    result = store.search(query, page=page, page_size=config.page_size, mode=mode)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.format(scores=scores))
