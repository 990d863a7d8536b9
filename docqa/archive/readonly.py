"""Dense search on a store this process may only read: a private copy of its Chroma directory.

chromadb cannot open a directory it may not write: its engine records a write lock in chroma.sqlite3 as it
opens it ("attempt to write a readonly database"), whatever its settings (chromadb 1.5.9). A store on a
read-only mount, or shared read-only with other users, would then lose dense and hybrid search. Copying its
`chroma/` directory to a private temporary directory costs time and space in proportion to the store, once per
process (and again after another process changed the store): 213 MB for 20,000 chunks, copied in 0.22-0.26 s
from the page cache (about 1 GB/s here, so about a second per 100,000 chunks), and as much room in TMPDIR. That
keeps every search mode; the catalog is read in place (SQLite can read without writing).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from docqa.archive.records import StoreError


class PrivateCopy:
    """A copy of a store's `chroma/` directory, removed when the process ends (or `remove`)."""

    def __init__(self, chroma_dir: Path, seen: int) -> None:
        """Copy `chroma_dir`; `seen` is the catalog's version it goes with (a changed store is copied again)."""
        self.seen = seen
        self.home = Path(tempfile.mkdtemp(prefix="docqa-readonly-"))
        atexit.register(self.remove)
        try:
            if chroma_dir.is_dir():
                copy = self.home / "chroma"
                shutil.copytree(chroma_dir, copy, copy_function=shutil.copyfile)
                # copytree gives directories the source's mode: read-only ones would stay read-only here
                for directory, _, _ in os.walk(copy):
                    os.chmod(directory, 0o700)
        except OSError as exc:
            self.remove()
            raise StoreError(f"read-only store: cannot copy its vectors to {self.home} to search them ({exc}): set "
                             "TMPDIR to a directory with room, or search with --mode lexical") from None
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
