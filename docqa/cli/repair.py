"""`docqa repair`: rebuild a local store's damaged catalog or vectors, each from the other."""

from __future__ import annotations

import sys
from typing import Any

import click

from docqa.cli.shared import build_settings, emit_json, friendly, store_options


@click.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@friendly
def repair(as_json: bool, **flags: Any) -> None:
    """Check the store and rebuild what is damaged: the vectors from the catalog, or the catalog from the vectors.

    Damaged files are kept beside the store as <name>.damaged-<time>. Exit code 0 when the store was repaired or
    had nothing to repair, 1 when nothing could be rebuilt (both halves damaged: ingest the files again).
    """
    from docqa.api import repair_store

    config = build_settings(**flags)
    if config.chroma_url:
        raise click.UsageError("docqa repair works on a local store (--store); a Chroma server keeps its own files")
    report = repair_store(config.store_dir, collection=config.collection, embedding_model=config.embedding_model,
                          embedding_backend=config.embedding_backend, chunk_tokens=config.chunk_tokens,
                          overlap_tokens=config.overlap_tokens, batch_size=config.batch_size)
    if as_json:
        emit_json(report.to_json())
    else:
        for line in report.summary():
            click.echo(line)
    if report.lost:
        click.echo("docqa: error: the store's catalog and vectors were both damaged: ingest your files again",
                   err=True)
    sys.exit(1 if report.lost else 0)
