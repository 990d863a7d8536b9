"""The ingestion pipeline: files -> pages -> chunks -> embeddings -> store, idempotent and all-or-none per file."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from docqa.chunking import Chunk, chunk_pages
from docqa.readers import SUPPORTED_SUFFIXES, Page, ReadError, is_supported, read_pages
from docqa.store import ArchivalStore


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
        return (
            f"{self.files_ingested} file(s) ingested, {self.files_unchanged} unchanged, "
            f"{len(self.files_failed)} failed{skipped}; {self.pages} pages, {self.chunks_added} chunks added "
            f"({self.chunks_total} in store) in {self.seconds:.1f} s ({rate:.1f} chunks/s)"
        )


def discover(paths: Iterable[Path], report: IngestReport, notice: Callable[[str], None]) -> list[Path]:
    """Expand directories (recursively, sorted); report missing paths and skip unsupported files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            candidates = [path]
        else:
            report.files_failed.append(FileFailure(str(path), "no such file or directory"))
            notice(f"error: {path}: no such file or directory")
            continue
        for candidate in candidates:
            if is_supported(candidate):
                files.append(candidate)
            elif candidate is path:
                # Named on the command line: the user meant it, so not reading it is a failure, not a skip.
                reason = (f"unsupported type '{candidate.suffix or '(none)'}' (docqa reads "
                          f"{', '.join(SUPPORTED_SUFFIXES)})")
                report.files_failed.append(FileFailure(str(candidate), reason))
                notice(f"error: {candidate}: {reason}")
            else:
                report.files_skipped.append(str(candidate))
                notice(f"skipped: {candidate}: unsupported type '{candidate.suffix or '(none)'}' "
                       f"(docqa reads {', '.join(SUPPORTED_SUFFIXES)})")
    return list(dict.fromkeys(files))


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_of(path: Path) -> str:
    """A document's key in the store: its absolute path, any bytes of it that are not UTF-8 as \\xNN."""
    return os.fsencode(path.expanduser().resolve()).decode("utf-8", "backslashreplace")


T = TypeVar("T")


class FileTimeout(BaseException):
    """Reading one file used up --file-timeout. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in pypdf or the readers can swallow it."""


def time_limited(items: Iterator[T], seconds: float) -> Iterator[T]:
    """Yield from `items`, raising FileTimeout once producing them (not consuming them) took `seconds`.

    Reading and chunking are what a hostile file controls (a cyclic PDF, a 5 MB line); embedding and
    storing are bounded by the text they get, so a large but sound file is not cut short. SIGALRM only
    works in the main thread; elsewhere the items pass through unlimited. An outer alarm (e.g.
    pytest-timeout's) is put back afterwards.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield from items
        return

    def expire(*_: object) -> None:
        raise FileTimeout

    entered = time.monotonic()
    outer_delay, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_handler = signal.signal(signal.SIGALRM, expire)
    left = seconds
    try:
        while True:
            if left <= 0:
                raise FileTimeout
            started = time.monotonic()
            # Repeats every 0.5 s: an alarm that lands in a finalizer is swallowed there ("Exception ignored").
            signal.setitimer(signal.ITIMER_REAL, left, 0.5)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                left -= time.monotonic() - started
            yield item
    finally:
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_delay:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - entered), 0.001))


@dataclass
class _Finished:
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


class _Progress:
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


class _Batcher:
    """Chunks of any number of files on their way to the store, embedded and sent to Chroma a batch at a time.

    Writing each file on its own made a directory of small files slow: a Chroma write cost ~25 ms whatever
    its size (140 one-file writes took 3.6 s, one write of the same chunks 0.12 s), and the model ran on
    one or two chunks at a time. The catalog still gets each file's chunk rows as soon as the file is read
    (one transaction per file, as before). Files stay all-or-none: each is begun (recorded as pending)
    before any of its chunks is written anywhere and committed only once a completed Chroma write holds
    all of them, so a kill at any moment leaves whole committed files plus pending ones, which the next
    writer's recover() removes.
    """

    def __init__(self, store: ArchivalStore, report: IngestReport, progress: _Progress,
                 notice: Callable[[str], None]) -> None:
        self.store = store
        self.size = store.settings.batch_size * 4  # chunks per write: several model batches
        self.report = report
        self.progress = progress
        self.notice = notice
        self.chunks: list[tuple[str, str, Chunk]] = []  # (generation, source, chunk) made, not yet in Chroma
        self.marks: list[int] = []  # for each of self.chunks, where the bar stands once it is embedded
        self.recorded = 0  # self.chunks[:recorded] are in the catalog
        self.finished: list[_Finished] = []  # files whose chunks are all made, not yet committed
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

    def finish(self, file: _Finished) -> None:
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
        with self.store.writing():
            plan = self._plan(files)
            total = sum(pages for _, pages in plan.values())
            if plan:  # only work to do loads the model: an unchanged re-ingest loads none
                self._with_status("loading the embedding model…", lambda: self.store.embedder)
            bar = tqdm(total=total, desc="ingesting", unit="page", disable=not self.progress, leave=False,
                       dynamic_ncols=True, mininterval=0.2)
            progress = _Progress(bar)
            batcher = _Batcher(self.store, report, progress, self.notice)
            try:
                offset = 0
                for path in files:
                    digest, pages = plan.get(path, (None, 0))
                    self._ingest_file(path, report, batcher, digest, offset, pages)
                    offset += pages
                batcher.write()
                progress.reach(total)
                bar.refresh()  # the finished count is drawn before the line is cleared
            except BaseException:
                # Interrupted (Ctrl-C) or an unexpected bug: take the files not committed out first.
                batcher.abort()
                raise
            finally:
                bar.close()  # leave=False: the bar's line is cleared, so what follows starts on a clean line
            report.chunks_total = self.store.count()
        if plan:
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

    def _plan(self, files: list[Path]) -> dict[Path, tuple[str, int]]:
        """The files that need reading, each with its hash and page count: the bar's total, known up front."""
        plan: dict[Path, tuple[str, int]] = {}
        for path in files:
            try:
                digest = file_hash(path)
            except OSError:
                continue  # reported when its turn comes
            if not self.store.is_current(source_of(path), digest):
                plan[path] = (digest, count_pages(path, self.settings.file_timeout))
        return plan

    def _ingest_file(self, path: Path, report: IngestReport, batcher: _Batcher, digest: str | None = None,
                     offset: int = 0, page_count: int = 0) -> None:
        """Read and chunk one file into the batcher (which commits it later), or report why not."""
        source = source_of(path)
        if digest is None:
            try:
                digest = file_hash(path)
            except OSError as exc:
                self._fail(report, path, f"cannot read: {exc.strerror or exc}")
                return
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
            batcher.drop(source)
            batcher.progress.reach(offset + page_count)
            self._fail(report, path, f"reading took longer than {self.settings.file_timeout:g} s (--file-timeout): "
                       "a damaged or hostile file? If it is only large, raise --file-timeout")
            return
        batcher.finish(_Finished(path, source, generation, digest, len(pages_seen), chunks, tokens, notices,
                                 offset + page_count))

    def _pages(self, path: Path, notices: list[str], seen: list[int]) -> Iterator[Page]:
        for page in read_pages(path, notices):
            seen.append(page.number)
            yield page

    def _fail(self, report: IngestReport, path: Path, reason: str) -> None:
        report.files_failed.append(FileFailure(str(path), reason))
        self.notice(f"error: {path}: {reason}")


def count_pages(path: Path, file_timeout: float) -> int:
    """How many pages the reader will make of `path` (a PDF's page count, a text's form feeds + 1), for the
    bar's total; 1 when it cannot be told quickly (the reader then reports what is wrong)."""
    def count() -> Iterator[int]:
        if path.suffix.lower() == ".pdf":
            from pypdf import PdfReader

            yield len(PdfReader(path).pages)
        else:
            with open(path, "rb") as handle:
                yield sum(block.count(b"\f") for block in iter(lambda: handle.read(1 << 20), b"")) + 1

    counting = time_limited(count(), min(file_timeout, 10.0) if file_timeout > 0 else 10.0)
    try:
        return max(1, next(counting))
    except (Exception, FileTimeout):  # a damaged PDF: reading it says what is wrong
        return 1
    finally:
        counting.close()


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
