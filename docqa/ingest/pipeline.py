"""The ingestion pipeline: files -> pages -> chunks -> embeddings -> store, idempotent and all-or-none per file,
resuming what an interrupted run of the same file stored (docqa.archive.resume)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from docqa.archive.health import DiskFull, disk_full
from docqa.archive.records import StoreError
from docqa.archive.store import ArchivalStore
from docqa.chunking import chunk_pages
from docqa.ingest.batching import Batcher, FinishedFile, Progress
from docqa.ingest.files import NotRegular, count_pages, discover, file_hash, source_of
from docqa.ingest.report import FileFailure, IngestReport
from docqa.ingest.time_limit import FileTimeout, time_limited, timeout_reason
from docqa.readers import Page, ReadError, read_pages


class Ingestor:
    """Runs the pipeline over files into one store; one instance per `docqa ingest` run."""

    def __init__(self, store: ArchivalStore, *, progress: bool = True,
                 notice: Callable[[str], None] = print, status: Callable[[str], None] | None = None) -> None:
        """`progress`: show the tqdm bar (on stderr); `notice`: where one-line notes and errors go;
        `status`: shows a transient one-line state ("loading the embedding model…"), "" clears it."""
        self.store = store
        self.settings = store.settings
        self.progress = progress
        self.notice = notice
        self.status = status or (lambda _: None)

    def run(self, paths: Iterable[Path]) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        files = discover(paths, report, self.notice)
        full_disk = _StopOnFullDisk(self.store, report)
        total = 0
        with full_disk, self.store.writing(resume=True):
            plan, unreadable = self._plan(files)
            full_disk.plan = plan
            total = sum(pages for _, pages in plan.values())
            if total:  # only work to do loads the model: an unchanged re-ingest loads none
                self._with_status("loading the embedding model…", lambda: self.store.embedder)
            bar = tqdm(total=total, desc="ingesting", unit="page", disable=not self.progress, leave=False,
                       ncols=_bar_width(), mininterval=0.2)
            progress = Progress(bar)
            batcher = Batcher(self.store, report, progress, self.notice)
            try:
                offset = 0
                for path in files:
                    if path in unreadable:
                        self._fail(report, path, unreadable[path])
                        continue
                    digest, pages = plan[path]
                    self._ingest_file(path, report, batcher, digest, offset, pages)
                    offset += pages
                batcher.write()
                self.store.release_resumable()  # interrupted ingests this run did not resume
                progress.reach(total)
                bar.refresh()  # the finished count is drawn before the line is cleared
            except BaseException as exc:
                # Interrupted (Ctrl-C) or an unexpected bug: take out the files not committed that have nothing
                # stored; the others stay pending, invisible, for a re-run to resume. Not on a full disk, where
                # removing them would write more: they stay pending, and the next writer resumes or removes them.
                if not disk_full(exc):
                    batcher.abort()
                raise
            finally:
                bar.close()  # leave=False: the bar's line is cleared, so what follows starts on a clean line
            report.chunks_total = self.store.count()
        if total and not report.error:
            self._with_status("preparing fast search (once per model)…", self.store.prepare_query_path,
                              only_if=self.store.query_path_pending)
        report.seconds = time.perf_counter() - started
        return report

    def _with_status(self, message: str, work: Callable[[], Any], only_if: Callable[[], bool] | None = None) -> None:
        if only_if is not None and not only_if():
            return
        self.status(message)
        try:
            work()
        finally:
            self.status("")

    def _plan(self, files: list[Path]) -> tuple[dict[Path, tuple[str, int]], dict[Path, str]]:
        """Each file's hash and, if it needs reading, its page count (the bar's total, known up front; 0 for
        an unchanged file); and the files that cannot be hashed, with the reason, reported in their turn."""
        plan: dict[Path, tuple[str, int]] = {}
        unreadable: dict[Path, str] = {}
        for path in files:
            try:
                digest = file_hash(path, self.settings.file_timeout)
            except NotRegular as exc:
                unreadable[path] = str(exc)
                continue
            except OSError as exc:
                unreadable[path] = f"cannot read: {exc.strerror or exc}"
                continue
            except FileTimeout:
                unreadable[path] = timeout_reason(self.settings.file_timeout, "hashing")
                continue
            current = self.store.is_current(source_of(path), digest)
            plan[path] = (digest, 0 if current else count_pages(path, self.settings.file_timeout))
        return plan, unreadable

    def _ingest_file(self, path: Path, report: IngestReport, batcher: Batcher, digest: str, offset: int,
                     page_count: int) -> None:
        """Read and chunk one file into the batcher (which commits it later), or report why not."""
        source = source_of(path)
        if source in batcher.begun:
            batcher.write()  # the same file under a second path (a link): commit the first to compare with
        if self.store.is_current(source, digest):
            report.files_unchanged += 1
            batcher.progress.reach(offset + page_count)
            return
        generation = batcher.begin(source, digest)
        notices: list[str] = []
        pages_seen: list[int] = []
        chunks = 0
        tokens = 0
        try:
            pages = self._pages(path, notices, pages_seen)
            made = chunk_pages(pages, self.store.embedder.tokenizer, self.settings.chunk_tokens,
                               self.settings.overlap_tokens)
            for chunk in time_limited(made, self.settings.file_timeout):
                # The pages before the one this chunk starts on are done once it is embedded.
                batcher.add(generation, source, chunk, offset + min(chunk.page_start - 1, page_count))
                chunks += 1
                tokens += chunk.tokens
            if not chunks:
                raise ReadError("no text to index")
        except ReadError as exc:
            batcher.drop(source)
            batcher.progress.reach(offset + page_count)
            self._fail(report, path, str(exc))
            return
        except FileTimeout:
            kept = batcher.drop(source, keep=True)
            batcher.progress.reach(offset + page_count)
            self._fail(report, path, timeout_reason(self.settings.file_timeout))
            if kept:
                self.notice(f"note: {path}: a re-run (with a higher --file-timeout) resumes from the chunks "
                            "embedded so far")
            return
        batcher.finish(FinishedFile(path, source, generation, digest, len(pages_seen), chunks, tokens, notices,
                                 offset + page_count))

    def _pages(self, path: Path, notices: list[str], seen: list[int]) -> Iterator[Page]:
        for page in read_pages(path, notices):
            seen.append(page.number)
            yield page

    def _fail(self, report: IngestReport, path: Path, reason: str) -> None:
        report.files_failed.append(FileFailure(str(path), reason))
        self.notice(f"error: {path}: {reason}")


def _bar_width() -> int | None:
    """The terminal's width less two columns: a full-width bar makes the terminal's own "^C" echo wrap onto
    the next line, and the bar's clearing would then leave it on screen (None: not a terminal; tqdm's default)."""
    try:
        return max(os.get_terminal_size(sys.stderr.fileno()).columns - 2, 20)
    except (OSError, ValueError, AttributeError):
        return None


class _StopOnFullDisk:
    """Ends an ingest that filled the disk with a report: the files committed before count as ingested, the
    others as failed with the reason (DiskFull: the store stopped before the disk was full, or SQLite found
    it full and rolled back), and the report says why it stopped."""

    def __init__(self, store: ArchivalStore, report: IngestReport) -> None:
        self.store = store
        self.report = report
        self.plan: dict[Path, tuple[str, int]] = {}

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> bool:
        if not isinstance(exc, DiskFull):
            return False
        self.report.error = str(exc)
        failed = {failure.path for failure in self.report.files_failed}
        with contextlib.suppress(StoreError):
            for path, (digest, _pages) in self.plan.items():
                if str(path) not in failed and not self.store.is_current(source_of(path), digest):
                    self.report.files_failed.append(FileFailure(str(path), f"not stored: {exc}"))
            self.report.chunks_total = self.store.count()
        return True


def delete_paths(store: ArchivalStore, paths: Iterable[Path]) -> tuple[list[str], list[str]]:
    """Remove documents (a directory removes every document under it); return (removed, not found)."""
    removed: list[str] = []
    missing: list[str] = []
    with store.writing():
        known = [doc.source for doc in store.documents()]
        for path in paths:
            source = source_of(path)
            matches = [s for s in known if s == source or s.startswith(source.rstrip("/") + "/")]
            if not matches:
                missing.append(str(path))
            for match in matches:
                store.delete_document(match)
                removed.append(match)
    return removed, missing


def ingest_text(store: ArchivalStore, source: str, text: str) -> int:
    """Store one piece of text as its own document (the agent's archival_memory_insert); return its chunks."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    settings = store.settings
    with store.writing():
        generation = store.begin_document(source, digest)
        chunks = list(chunk_pages([Page(1, text)], store.embedder.tokenizer, settings.chunk_tokens,
                                  settings.overlap_tokens))
        try:
            store.add_chunks(generation, source, chunks, store.embedder.embed([c.text for c in chunks]))
        except BaseException:
            store.abort_document(generation)
            raise
        store.commit_document(source, generation, digest, 1, len(chunks))
    return len(chunks)
