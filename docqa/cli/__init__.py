"""The `docqa` command line: click commands and the chat REPL over the library."""

from docqa.cli.main import main

__all__ = ["main"]
