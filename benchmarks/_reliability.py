"""Shared machinery of the reliability benchmarks (crash_test.py, concurrency_test.py, hostile_input.py).

- a corpus of real text (PDFs, text and markdown files), each file holding one word found nowhere else;
- two ways to run a `docqa` command as its own process: `cli`, the installed console script (what a user
  runs), and `fork`, a fork of this process with the embedding model already loaded that then runs the
  same click command (the quick form: no 10-20 s model load per run). Either way the process has its own
  Chroma client and can be SIGKILLed;
- `inspect_store`, which checks a store from the outside: catalog against Chroma, every chunk of every
  committed file present exactly once, and search finding every file;
- `record`, which merges one section into benchmarks/results/reliability.json;
- `parse_args`, `start` and `finish`: the options, set-up and ending crash_test.py and
  concurrency_test.py share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import RESULTS, machine  # noqa: E402
from testkit.documents import real_text_paragraphs, write_multipage_pdf, write_text  # noqa: E402

DOCQA = Path(sys.executable).parent / "docqa"
COLLECTION = "docqa"


# -- corpus -----------------------------------------------------------------------------------------
def marker(index: int) -> str:
    """A word that occurs in exactly one corpus file (letters and digits only: one FTS5 token)."""
    return f"zqx{index:02d}marker"


@dataclass(frozen=True)
class Corpus:
    directory: Path
    words: dict[str, str]  # source (absolute path, as the store keys it) -> its unique word

    @property
    def files(self) -> list[Path]:
        return [Path(source) for source in self.words]


def build_corpus(directory: Path, quick: bool, variant: int = 0) -> Corpus:
    """A few PDFs and text/markdown files of Wikipedia passages; `variant` changes every file's text.

    quick: 2 PDFs of 3 pages, 2 text files and 1 markdown file (about 40 chunks);
    full: 3 PDFs of 6 pages, 3 text files and 1 markdown file (about 120 chunks).
    """
    directory.mkdir(parents=True, exist_ok=True)
    pdfs, pages, texts = (2, 3, 2) if quick else (3, 6, 3)
    paragraphs = iter(real_text_paragraphs(2000)[variant * 400:])
    words: dict[str, str] = {}
    index = 0

    def take(count: int) -> list[str]:
        return [next(paragraphs) for _ in range(count)]

    def with_marker(parts: list[str], word: str) -> list[str]:
        middle = len(parts) // 2
        return parts[:middle] + [f"{parts[middle]} The catalogue number is {word}."] + parts[middle + 1:]

    for n in range(pdfs):
        word = marker(index)
        page_texts = [" ".join(take(3)) for _ in range(pages)]
        path = write_multipage_pdf(directory / f"report{n}.pdf", with_marker(page_texts, word))
        words[str(path.resolve())] = word
        index += 1
    for n in range(texts):
        word = marker(index)
        path = write_text(directory / f"notes{n}.txt", "\n\n".join(with_marker(take(10 if quick else 16), word)))
        words[str(path.resolve())] = word
        index += 1
    word = marker(index)
    sections = [f"## Section {i}\n\n{text}" for i, text in enumerate(take(8 if quick else 14))]
    path = write_text(directory / "readme.md", "# Notes\n\n" + "\n\n".join(with_marker(sections, word)))
    words[str(path.resolve())] = word
    return Corpus(directory, words)


# -- running docqa as a process ---------------------------------------------------------------------
class Run:
    """One `docqa` command running as its own process (a subprocess or a fork of this one)."""

    def __init__(self, args: list[str], launcher: str, log: Path, env: dict[str, str] | None = None) -> None:
        """Start `docqa ARGS`; its stdout goes to `log`, its stderr to `log` with suffix .err."""
        self.args = args
        self.log = log
        self.started = time.monotonic()
        self.returncode: int | None = None
        self._popen: subprocess.Popen | None = None
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
            if launcher == "cli":
                self._popen = subprocess.Popen([str(DOCQA), *args], stdout=out, stderr=err,
                                               env={**os.environ, **(env or {})})
                self.pid = self._popen.pid
            elif launcher == "fork":
                self.pid = _fork(lambda: _run_cli(args, env), out.fileno(), err.fileno())
            else:
                raise ValueError(f"unknown launcher {launcher!r}: use cli or fork")

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> bool:
        """SIGKILL it; True if it was still running."""
        if self.poll() is not None:
            return False
        os.kill(self.pid, signal.SIGKILL)
        self.wait()
        return True

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self.wait()
                raise TimeoutError(f"docqa {' '.join(self.args)} ran past {timeout:.0f} s")
            time.sleep(0.02)
        return int(self.returncode or 0)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def errors(self) -> str:
        return self.log.with_suffix(".err").read_text(errors="replace")


def _run_cli(args: list[str], env: dict[str, str] | None) -> int:
    from docqa.cli.main import main

    os.environ.update(env or {})
    try:
        main(args, prog_name="docqa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _fork(function: Any, output_fd: int, error_fd: int | None = None) -> int:
    """Run function() in a forked child, stdout to output_fd, stderr to error_fd; return the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.dup2(output_fd, 1)
        os.dup2(output_fd if error_fd is None else error_fd, 2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = function()
    except BaseException:  # the child must never return into the parent's code
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 70)


def in_child(function: Any, *args: Any, timeout: float = 600) -> Any:
    """function(*args) run in a forked child (which may open Chroma); its JSON-able result comes back.

    The parent never opens a Chroma client itself, so each child loads the store from disk, as a new
    `docqa` process would, and the parent stays safe to fork.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)

    def child() -> int:
        result_path.write_text(json.dumps(function(*args)))
        return 0

    with tempfile.TemporaryFile() as out:
        pid = _fork(child, out.fileno())
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"{function.__name__} ran past {timeout:.0f} s")
            time.sleep(0.02)
        out.seek(0)
        log = out.read().decode(errors="replace")
    text = result_path.read_text()
    result_path.unlink()
    if os.waitstatus_to_exitcode(status) != 0 or not text:
        raise RuntimeError(f"{function.__name__} failed in its child process:\n{log[-3000:]}")
    return json.loads(text)


def load_model() -> None:
    """Load the default embedder once, so forked children inherit it (and never run it here)."""
    from docqa.embeddings.load import load_embedder

    load_embedder()


# -- reading a store from the outside ---------------------------------------------------------------
def catalog_path(store: Path) -> Path:
    return store / f"{COLLECTION}.catalog.sqlite3"


def read_catalog(store: Path) -> sqlite3.Connection | None:
    path = catalog_path(store)
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def committed_chunks(store: Path) -> dict[str, list[tuple[str, str]]]:
    """source -> [(chunk id, content hash)] of its current version, in chunk order (SQL only)."""
    db = read_catalog(store)
    if db is None:
        return {}
    with contextlib.closing(db):
        rows = db.execute("SELECT c.source, c.id, c.content_hash FROM chunks c JOIN documents d"
                          " ON d.source = c.source AND d.generation = c.generation ORDER BY c.source, c.idx")
        out: dict[str, list[tuple[str, str]]] = {}
        for source, chunk_id, content_hash in rows:
            out.setdefault(source, []).append((chunk_id, content_hash))
        return out


def progress(store: Path, generations: set[str]) -> tuple[int, int]:
    """(chunk rows written of these generations, committed or not; documents committed at one of them)."""
    db = read_catalog(store)
    if db is None:
        return 0, 0
    try:
        with contextlib.closing(db):
            marks = ",".join("?" * len(generations))
            rows = db.execute(f"SELECT count(*) FROM chunks WHERE generation IN ({marks})",
                              list(generations)).fetchone()[0]
            documents = db.execute(f"SELECT count(*) FROM documents WHERE generation IN ({marks})",
                                   list(generations)).fetchone()[0]
            return int(rows), int(documents)
    except sqlite3.Error:
        return 0, 0  # tables not created yet


def inspect_store(store: str, words: dict[str, str], references: list[dict[str, list[list[str]]]],
                  final: bool) -> dict[str, Any]:
    """Check a store no process is writing to; return what is wrong with it (runs in a child).

    `references` are the chunks, per source, of clean ingests of the corpus: the current texts first, then
    older texts the store may hold. After any crash (final=False): each committed file has exactly the
    chunks a clean ingest makes of one of those texts, in the catalog, the lexical index and Chroma's
    vector index; every vector in Chroma
    belongs to a committed version or to one the catalog lists for clean-up (nothing untracked); search
    finds every committed file by its unique word, and nothing else. After the re-run (final=True): every
    file is committed and Chroma holds exactly the committed chunks.
    """
    import numpy as np

    from docqa.archive.store import ArchivalStore
    from docqa.embeddings.load import load_embedder
    from docqa.settings import Settings

    problems: list[str] = []
    store_dir = Path(store)
    empty = {"problems": [], "lost": 0, "duplicated": 0, "documents": 0, "chunks": 0, "found": 0,
             "vectors_unreadable": False}
    if not catalog_path(store_dir).exists():
        # killed before the catalog was made: nothing written, nothing to check
        return {**empty, "problems": ["no catalog after a completed run"] if final else []}
    db = sqlite3.connect(catalog_path(store_dir), timeout=30)
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"documents", "chunks", "chunks_fts", "orphans"} <= tables:
        db.close()
        return empty  # killed while the schema was being made; the next run completes it
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"catalog integrity_check: {integrity}")
    try:
        # rank 1: also compare the index with its content table (the chunk rows)
        db.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        problems.append(f"lexical index out of step with the chunk rows: {exc}")
    documents = {source: (generation, count) for source, generation, count in
                 db.execute("SELECT source, generation, chunks FROM documents")}
    orphans = {row[0] for row in db.execute("SELECT generation FROM orphans")}
    rows = list(db.execute("SELECT id, generation, source, idx, content_hash, text FROM chunks"))
    db.close()
    current = {r[0]: r for r in rows if documents.get(r[2], ("",))[0] == r[1]}
    untracked_rows = [r[0] for r in rows if r[0] not in current and r[1] not in orphans]
    if untracked_rows:
        problems.append(f"{len(untracked_rows)} chunk rows of versions neither current nor listed for clean-up")

    lost: set[str] = set()
    duplicated: set[str] = set()
    per_source: dict[str, list[tuple[str, str]]] = {}
    for chunk_id, _, source, _idx, content_hash, _ in sorted(current.values(), key=lambda r: (r[2], r[3])):
        per_source.setdefault(source, []).append((chunk_id, content_hash))
    for source, (generation, count) in documents.items():
        got = per_source.get(source, [])
        if len(got) != count:
            problems.append(f"{Path(source).name}: catalog says {count} chunks, has {len(got)}")
        if sorted(int(i.rsplit(":", 1)[1]) for i, _ in got) != list(range(len(got))):
            problems.append(f"{Path(source).name}: chunk numbers are not 0..{len(got) - 1} once each")
        hashes = Counter(h for _, h in got)
        extra = 0  # repeated text is no duplicate in itself ("> > >" chunks); a clean ingest's is the measure
        versions = [[tuple(pair) for pair in ref[source]] for ref in references if ref.get(source)]
        if versions:
            # Compare with the clean ingest of the text this version was made from (its generation).
            expected = next((v for v in versions if v[0][0].split(":")[0] == generation), versions[0])
            if final and expected is not versions[0]:
                problems.append(f"{Path(source).name}: an old version is still current after the re-run")
            want = Counter(h for _, h in expected)
            extra = sum((hashes - want).values())
            missing = sum((want - hashes).values())
            if missing:
                lost.update(f"{source}#{h}" for h in (want - hashes))
                problems.append(f"{Path(source).name}: {missing} chunks of a clean ingest are missing")
            if [i for i, _ in got] != [i for i, _ in expected]:
                problems.append(f"{Path(source).name}: chunk ids differ from a clean ingest's")
        if extra:
            duplicated.update(f"{source}#dup{n}" for n in range(extra))
            problems.append(f"{Path(source).name}: {extra} duplicated chunks")
    if final:
        for source in words:
            if source not in documents:
                problems.append(f"{Path(source).name}: not in the store after the re-run")
                lost.update(f"{source}#{h}" for _, h in (references[0] if references else {}).get(source, []))
        if orphans:
            problems.append(f"{len(orphans)} versions still listed for clean-up after a completed run")
        stale_rows = [r[0] for r in rows if r[0] not in current]
        if stale_rows:
            problems.append(f"{len(stale_rows)} chunk rows of old or aborted versions left after a completed run")

    from chromadb.errors import ChromaError

    embedder = load_embedder()
    store_obj = ArchivalStore(Settings(store_dir=store_dir, collection=COLLECTION), embedder=embedder)
    try:
        got = store_obj.collection.get(include=["metadatas", "documents"])
    except ChromaError as exc:
        # Chroma's own files are damaged (killed while it saved its index): the next writer rebuilds them.
        problems.append(f"Chroma's vector index cannot be loaded: {str(exc)[-120:]}")
        return {"problems": problems, "lost": len(lost), "duplicated": len(duplicated),
                "documents": len(documents), "chunks": len(current), "found": 0, "vectors_unreadable": True}
    chroma = {i: (m, d) for i, m, d in zip(got["ids"], got["metadatas"], got["documents"], strict=True)}
    missing_dense = set(current) - set(chroma)
    if missing_dense:
        lost.update(missing_dense)
        problems.append(f"{len(missing_dense)} committed chunks missing from Chroma")
    untracked = [i for i, (m, _) in chroma.items() if i not in current and m.get("generation") not in orphans]
    if untracked:
        duplicated.update(untracked)
        problems.append(f"{len(untracked)} vectors in Chroma belong to no current or listed version")
    if final and set(chroma) - set(current):
        problems.append(f"{len(set(chroma) - set(current))} vectors of old or aborted versions left in Chroma")
    wrong_text = [i for i in current if i in chroma and chroma[i][1] != current[i][5]]
    if wrong_text:
        problems.append(f"{len(wrong_text)} chunks whose Chroma text differs from the catalog's")
    if chroma:
        # Reachable in the vector index itself, not only listed in Chroma's metadata tables.
        reachable: set[str] = set()
        for seed in (0, 1):
            vector = np.random.default_rng(seed).standard_normal((1, embedder.dimension)).astype("float32")
            result = store_obj.collection.query(query_embeddings=vector, n_results=len(chroma), include=[])
            reachable.update(result["ids"][0])
        unreachable = set(current) - reachable
        if unreachable:
            lost.update(unreachable)
            problems.append(f"{len(unreachable)} committed chunks not in Chroma's vector index")

    found = search_problems(store_obj, words, documents, problems)
    return {"problems": problems, "lost": len(lost), "duplicated": len(duplicated),
            "documents": len(documents), "chunks": len(current), "found": found, "vectors_unreadable": False}


# -- command line -----------------------------------------------------------------------------------
def search_problems(store: Any, words: dict[str, str], documents: Any, problems: list[str]) -> int:
    """Search each committed file's marker word, lexical and hybrid, through `store` (an ArchivalStore): add
    what is wrong to `problems` and return how many files were found as they should be."""
    found = 0
    for source, word in words.items():
        if source not in documents:
            continue
        lexical = store.search(word, mode="lexical").hits
        hybrid = store.search(word, mode="hybrid").hits
        if not lexical or lexical[0].record.source != source:
            problems.append(f"lexical search for {word} does not find {Path(source).name} first")
        elif source not in {hit.record.source for hit in hybrid}:
            problems.append(f"hybrid search for {word} misses {Path(source).name} on page 0")
        else:
            found += 1
        if any(hit.record.source not in documents for hit in lexical + hybrid):
            problems.append(f"search for {word} returned a chunk of an uncommitted file")
    return found


def search_output_problem(run: Run, word: str, source: str) -> str | None:
    """What is wrong with a finished `docqa search WORD --json` run that should find `source`, if anything."""
    if run.wait(timeout=600) != 0:
        return f"docqa search exited {run.returncode}: {run.errors()[-300:]}"
    try:
        results = json.loads(run.output())["results"]
    except (ValueError, KeyError):
        return f"docqa search printed no JSON: {run.output()[-300:]}"
    if source not in {hit["source"] for hit in results}:
        return f"docqa search {word} does not find {Path(source).name}"
    return None


def parse_args(argv: list[str] | None, description: str, quick_help: str, repeat: tuple[str, str],
               launcher_help: str | None = None, workdir_help: str | None = None) -> argparse.Namespace:
    """The options of crash_test.py and concurrency_test.py; `repeat` is the (flag, help) of the run count."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(repeat[0], type=int, help=repeat[1])
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--launcher", choices=["cli", "fork"], help=launcher_help)
    parser.add_argument("--workdir", type=Path, help=workdir_help)
    parser.add_argument("--no-record", action="store_true", help="do not write reliability.json")
    parser.add_argument("--summary", type=Path, help="also write the results as JSON to this file")
    return parser.parse_args(argv)


def start(args: argparse.Namespace, prefix: str) -> tuple[str, Path, float]:
    """The launcher, work directory (with logs/) and start time of a run, the embedding model loaded.

    DOCQA_* variables are dropped so the user's settings cannot change what the runs do.
    """
    launcher = args.launcher or ("fork" if args.quick else "cli")
    for var in [v for v in os.environ if v.startswith("DOCQA_")]:
        del os.environ[var]
    started = time.monotonic()
    load_model()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    return launcher, work, started


# -- results ----------------------------------------------------------------------------------------
def record(section: str, payload: dict[str, Any]) -> Path:
    """Merge one section into benchmarks/results/reliability.json and refresh its summary."""
    path = RESULTS / "reliability.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data["benchmark"] = "reliability"
    data[section] = {**payload, "machine": machine()}  # each section's own load average and time
    sections = [data[name] for name in ("crash", "concurrency", "hostile_input", "server_crash", "server_faults",
                                        "faults") if name in data]
    data["summary"] = {
        "trials": sum(s.get("trials", 0) for s in sections),
        "inputs_tried": sum(s.get("inputs_tried", 0) for s in sections),
        "faults_survived": sum(s.get("faults_survived", 0) for s in sections),
        "chunks_lost": sum(s.get("chunks_lost", 0) for s in sections),
        "chunks_duplicated": sum(s.get("chunks_duplicated", 0) for s in sections),
        "failures": sum(len(s.get("failures", [])) for s in sections),
        "tracebacks": sum(s.get("tracebacks", 0) for s in sections),
        "hangs": sum(s.get("hangs", 0) for s in sections),
    }
    data["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def finish(section: str, payload: dict[str, Any], args: argparse.Namespace) -> int:
    """Record the payload (unless --no-record) and write --summary; the exit code, 1 if anything failed."""
    if not args.no_record:
        print(f"wrote {record(section, payload)}")
    if args.summary:
        args.summary.write_text(json.dumps(payload, indent=2))
    return 1 if payload["failures"] else 0


def rng_for(seed: int, trial: int) -> random.Random:
    return random.Random(f"{seed}:{trial}")
