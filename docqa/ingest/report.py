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
    pages: int = 0
    chunks_added: int = 0
    chunks_reused: int = 0  # of chunks_added, those an interrupted ingest had stored already (not embedded again)
    chunks_total: int = 0
    tokens: int = 0
    seconds: float = 0.0

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
        }

    def summary(self) -> str:
        rate = self.chunks_added / self.seconds if self.seconds else 0.0
        skipped = ""
        if self.files_skipped:
            names = ", ".join(Path(p).name for p in self.files_skipped[:5])
            more = f" and {len(self.files_skipped) - 5} more" if len(self.files_skipped) > 5 else ""
            skipped = f", {len(self.files_skipped)} skipped ({names}{more}: not a supported type)"
        resumed = f"; resumed: {self.chunks_reused} of {self.chunks_added} chunks reused" if self.chunks_reused else ""
        return (
            f"{self.files_ingested} file(s) ingested, {self.files_unchanged} unchanged, "
            f"{len(self.files_failed)} failed{skipped}; {self.pages} pages, {self.chunks_added} chunks added "
            f"({self.chunks_total} in store) in {self.seconds:.1f} s ({rate:.1f} chunks/s){resumed}"
        )
