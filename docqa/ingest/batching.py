"""Chunks of many files on their way to the store: embedded and written a batch at a time, committed per file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from docqa.archive.records import chunk_id
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
        self.reused_chunks = 0

    def reach(self, mark: int) -> None:
        if mark > self.done:
            self.bar.update(mark - self.done)
            self.done = mark

    def embedded(self, chunks: int, mark: int) -> None:
        self.chunks += chunks
        self._count()
        self.reach(mark)

    def reused(self, chunks: int, mark: int) -> None:
        """Chunks an interrupted ingest had stored already: done, with no embedding."""
        self.reused_chunks += chunks
        self._count()
        self.reach(mark)

    def _count(self) -> None:
        reused = f" + {self.reused_chunks} reused" if self.reused_chunks else ""
        self.bar.set_postfix_str(f"{self.chunks} chunks{reused}", refresh=False)


class Batcher:
    """Chunks of any number of files on their way to the store, embedded and sent to Chroma a batch at a time.

    Writing each file on its own made a directory of small files slow: a Chroma write cost ~25 ms whatever
    its size (140 one-file writes took 3.6 s, one write of the same chunks 0.12 s), and the model ran on
    one or two chunks at a time. The catalog still gets each file's chunk rows as soon as the file is read
    (one transaction per file, as before). Files stay all-or-none: each is begun (recorded as pending)
    before any of its chunks is written anywhere and committed only once a completed Chroma write holds
    all of them, so a kill at any moment leaves whole committed files plus pending ones, which the next
    ingest adopts if it re-runs the same file (its chunks already stored are not embedded again, see
    docqa.archive.resume) and otherwise removes.
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
        self.reused: dict[str, int] = {}  # adopted generation -> its chunks found stored already

    def begin(self, source: str, file_hash: str) -> str:
        generation = self.store.begin_document(source, file_hash)
        self.begun[source] = generation
        if self.store.adopt(generation):
            self.reused[generation] = 0
            self.written.add(generation)
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
        """Put the chunks made since the last call, all of one file, in the catalog (those of an adopted
        version that the store holds already are taken out instead: they need neither writing nor embedding)."""
        if len(self.chunks) > self.recorded:
            generation, source, _ = self.chunks[self.recorded]
            if generation in self.reused:
                self._take_out_stored(generation)
            if len(self.chunks) > self.recorded:
                self.store.record_chunks(generation, source, [c for _, _, c in self.chunks[self.recorded :]])
            self.recorded = len(self.chunks)

    def _take_out_stored(self, generation: str) -> None:
        stored = self.store.stored_already(self.chunks[self.recorded :])  # one Chroma call per batch
        if not stored:
            return
        done = [chunk_id(generation, c) in stored for _, _, c in self.chunks[self.recorded :]]
        mark = max(m for m, is_done in zip(self.marks[self.recorded :], done, strict=True) if is_done)
        self.chunks[self.recorded :] = [item for item, is_done in zip(self.chunks[self.recorded :], done,
                                                                      strict=True) if not is_done]
        self.marks[self.recorded :] = [m for m, is_done in zip(self.marks[self.recorded :], done, strict=True)
                                       if not is_done]
        self.reused[generation] += sum(done)
        self.progress.reused(sum(done), mark)

    def drop(self, source: str, keep: bool = False) -> bool:
        """Take out a file that failed: its chunks waiting here and any already in the store, unless `keep`
        (it may go in when re-run: the next ingest resumes it or removes it). Return whether any were kept."""
        generation = self.begun.pop(source)
        kept = [k for k, item in enumerate(self.chunks) if item[0] != generation]
        self.chunks = [self.chunks[k] for k in kept]
        self.marks = [self.marks[k] for k in kept]
        self.recorded = min(self.recorded, len(self.chunks))  # its chunks were the last ones, none recorded
        self.reused.pop(generation, None)
        if generation in self.written:
            self.written.discard(generation)
            if keep:
                return True
            self.store.abort_documents([generation])
        else:
            self.store.abort_documents([], [generation])
        return False

    def write(self) -> None:
        """Embed and store the waiting chunks, then commit every file they complete."""
        self._record()
        if self.chunks:
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
            if file.generation in self.reused:
                reused = self.reused.pop(file.generation)
                self.report.chunks_reused += reused
                self.notice(f"note: {file.path}: resumed an interrupted ingest: {reused} of {file.chunks} "
                            "chunks reused")
            self.report.files_ingested += 1
            self.report.pages += file.pages
            self.report.chunks_added += file.chunks
            self.report.tokens += file.tokens
            self.progress.reach(file.progress_mark)
        self.finished = []

    def abort(self) -> None:
        """Interrupted (Ctrl-C, an error): take out the files not committed that have nothing in the store
        yet. Those with chunks stored stay pending, invisible: the next ingest resumes or removes them."""
        self.store.abort_documents([], [g for g in self.begun.values() if g not in self.written])
        self.begun.clear()
