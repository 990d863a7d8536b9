"""Chunks of many files on their way to the store: embedded and written a batch at a time, committed per file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from docqa.archive.store import ArchivalStore
from docqa.chunking import Chunk
from docqa.ingest.report import IngestReport


@dataclass
class FinishedFile:
    """A file whose chunks are all made; committed by the store write that holds the last of them."""

    path: Path
    source: str
    generation: str
    file_hash: str
    pages: int
    chunks: int
    tokens: int
    notices: list[str]
    progress_mark: int  # where the ingest bar stands once this file is stored


# The bar moves at least this often (in chunks), whatever --batch-size: a bar that stands still looks hung.
PROGRESS_CHUNKS = 32


class Progress:
    """The one ingest bar: the pages of the files to (re)ingest, counted before embedding starts, so it has
    a total, a rate and an ETA. A page counts as done once the chunks that start on it are embedded."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.done = 0
        self.chunks = 0

    def reach(self, mark: int) -> None:
        if mark > self.done:
            self.bar.update(mark - self.done)
            self.done = mark

    def embedded(self, chunks: int, mark: int) -> None:
        self.chunks += chunks
        self.bar.set_postfix_str(f"{self.chunks} chunks", refresh=False)
        self.reach(mark)


class Batcher:
    """Chunks of any number of files on their way to the store, embedded and sent to Chroma a batch at a time.

    Writing each file on its own made a directory of small files slow: a Chroma write cost ~25 ms whatever
    its size (140 one-file writes took 3.6 s, one write of the same chunks 0.12 s), and the model ran on
    one or two chunks at a time. The catalog still gets each file's chunk rows as soon as the file is read
    (one transaction per file, as before). Files stay all-or-none: each is begun (recorded as pending)
    before any of its chunks is written anywhere and committed only once a completed Chroma write holds
    all of them, so a kill at any moment leaves whole committed files plus pending ones, which the next
    writer's recover() removes.
    """

    def __init__(self, store: ArchivalStore, report: IngestReport, progress: Progress,
                 notice: Callable[[str], None]) -> None:
        self.store = store
        self.size = store.settings.batch_size * 4  # chunks per write: several model batches
        self.report = report
        self.progress = progress
        self.notice = notice
        self.chunks: list[tuple[str, str, Chunk]] = []  # (generation, source, chunk) made, not yet in Chroma
        self.marks: list[int] = []  # for each of self.chunks, where the bar stands once it is embedded
        self.recorded = 0  # self.chunks[:recorded] are in the catalog
        self.finished: list[FinishedFile] = []  # files whose chunks are all made, not yet committed
        self.begun: dict[str, str] = {}  # source -> generation of each begun file not yet committed
        self.written: set[str] = set()  # generations with chunks in the store already

    def begin(self, source: str, file_hash: str) -> str:
        generation = self.store.begin_document(source, file_hash)
        self.begun[source] = generation
        return generation

    def add(self, generation: str, source: str, chunk: Chunk, mark: int) -> None:
        self.chunks.append((generation, source, chunk))
        self.marks.append(mark)
        if len(self.chunks) >= self.size:
            self.write()

    def finish(self, file: FinishedFile) -> None:
        self._record()
        self.finished.append(file)

    def _record(self) -> None:
        """Put the chunks made since the last call, all of one file, in the catalog."""
        if len(self.chunks) > self.recorded:
            generation, source, _ = self.chunks[self.recorded]
            self.store.record_chunks(generation, source, [c for _, _, c in self.chunks[self.recorded :]])
            self.recorded = len(self.chunks)

    def drop(self, source: str) -> None:
        """Take out a file that failed: its chunks waiting here and any already in the store."""
        generation = self.begun.pop(source)
        kept = [k for k, item in enumerate(self.chunks) if item[0] != generation]
        self.chunks = [self.chunks[k] for k in kept]
        self.marks = [self.marks[k] for k in kept]
        self.recorded = min(self.recorded, len(self.chunks))  # its chunks were the last ones, none recorded
        if generation in self.written:
            self.written.discard(generation)
            self.store.abort_documents([generation])
        else:
            self.store.abort_documents([], [generation])

    def write(self) -> None:
        """Embed and store the waiting chunks, then commit every file they complete."""
        if self.chunks:
            self._record()
            texts = [c.text for _, _, c in self.chunks]
            step = min(PROGRESS_CHUNKS, self.store.settings.batch_size)
            parts = []
            for start in range(0, len(texts), step):
                parts.append(self.store.embedder.embed(texts[start : start + step], self.store.settings.batch_size))
                self.progress.embedded(len(parts[-1]), max(self.marks[start : start + step]))
            self.written.update(generation for generation, _, _ in self.chunks)  # before: the call may be cut
            self.store.add_vectors(self.chunks, np.concatenate(parts))
            self.chunks = []
            self.marks = []
            self.recorded = 0
        if not self.finished:
            return
        self.store.commit_documents([(f.source, f.generation, f.file_hash, f.pages, f.chunks)
                                     for f in self.finished])
        for file in self.finished:
            del self.begun[file.source]
            self.written.discard(file.generation)
            for message in file.notices:
                self.notice(f"note: {file.path}: {message}")
            self.report.files_ingested += 1
            self.report.pages += file.pages
            self.report.chunks_added += file.chunks
            self.report.tokens += file.tokens
            self.progress.reach(file.progress_mark)
        self.finished = []

    def abort(self) -> None:
        """Interrupted: take out every file not committed (whole files already committed stay)."""
        generations = list(self.begun.values())
        self.store.abort_documents([g for g in generations if g in self.written],
                                   [g for g in generations if g not in self.written])
        self.begun.clear()
