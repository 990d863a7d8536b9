"""The `docqa` command group: each command parses options, builds Settings and calls the library."""

from __future__ import annotations

import click

from docqa.cli import ask, chat, documents, repair
from docqa.cli.process import configure_process


class _Commands(click.Group):
    """The docqa group, with `bench` loaded only when it is asked for: the other commands never import it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "bench"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "bench":
            from docqa.bench.cli import bench

            return bench
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="docqa")
def main() -> None:
    """Ask questions about documents far larger than an LLM's context window.

    Documents go into archival memory (docqa ingest); an LLM agent pages through it with function
    calls to answer questions (docqa ask, docqa chat), as in the MemGPT paper.
    """
    configure_process()


for _command in (documents.ingest, documents.delete, documents.list_documents, documents.search, ask.ask, chat.chat,
                 chat.sessions, repair.repair):
    main.add_command(_command)
