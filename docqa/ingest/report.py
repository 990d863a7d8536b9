"""What an ingest run reports: files in, unchanged, failed (with reasons) and skipped; pages, chunks, time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FileFailure:
    path: str
    error: str


@dataclass
class IngestReport:
    files_ingested: int = 0
    files_unchanged: int = 0
    files_failed: list[FileFailure] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    # why each skipped path was skipped, in short ("not a supported type", "not a regular file"), for summary()
    skipped_kinds: dict[str, str] = field(default_factory=dict, repr=False)
    pages: int = 0
    chunks_added: int = 0
    chunks_reused: int = 0  # of chunks_added, those an interrupted ingest had stored already (not embedded again)
    chunks_total: int = 0
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None  # why the run stopped before the end (a full disk), if it did

    def skip(self, path: str, kind: str) -> None:
        """Note a file found in a directory and left out (not a failure: the user did not name it)."""
        self.files_skipped.append(path)
        self.skipped_kinds[path] = kind

    def to_json(self) -> dict[str, Any]:
        return {
            "files_ingested": self.files_ingested,
            "files_unchanged": self.files_unchanged,
            "files_failed": [{"path": f.path, "error": f.error} for f in self.files_failed],
            "files_skipped": self.files_skipped,
            "pages": self.pages,
            "chunks_added": self.chunks_added,
            "chunks_reused": self.chunks_reused,
            "chunks_total": self.chunks_total,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }

    def summary(self) -> str:
        rate = self.chunks_added / self.seconds if self.seconds else 0.0
        skipped = ""
        if self.files_skipped:
            kinds: dict[str, list[str]] = {}  # the first five names, grouped by why they were skipped
            for path in self.files_skipped[:5]:
                kinds.setdefault(self.skipped_kinds.get(path, "not a supported type"), []).append(Path(path).name)
            why = "; ".join(f"{', '.join(names)}: {kind}" for kind, names in kinds.items())
            more = f"; and {len(self.files_skipped) - 5} more" if len(self.files_skipped) > 5 else ""
            skipped = f", {len(self.files_skipped)} skipped ({why}{more})"
        resumed = f"; resumed: {self.chunks_reused} of {self.chunks_added} chunks reused" if self.chunks_reused else ""
        return (
            f"{self.files_ingested} file(s) ingested, {self.files_unchanged} unchanged, "
            f"{len(self.files_failed)} failed{skipped}; {self.pages} pages, {self.chunks_added} chunks added "
            f"({self.chunks_total} in store) in {self.seconds:.1f} s ({rate:.1f} chunks/s){resumed}"
        )
