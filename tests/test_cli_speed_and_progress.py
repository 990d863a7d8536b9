"""What a user sees from the everyday commands: no store made by mistake, options checked before any work,
skipped files named, readable search output, a search process without torch, and the ingest bar on a real
terminal (issue 11)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

from docqa.cli.evidence import evidence_excerpt
from testkit.documents import real_text_paragraphs, write_text
from tests.helpers import DOCQA, hear_ctrl_c, invoke, invoke_json


@pytest.mark.parametrize("command", [["search", "anything"], ["list"], ["ask", "a question?", "--no-llm"],
                                     ["delete", "some.txt"]])
def test_commands_that_read_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "typo"
    result = invoke(*command, "--store", typo)
    assert result.exit_code == 1
    assert f"no store at {typo}; run docqa ingest first" in result.stderr
    assert not typo.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--batch-size", "0"], "--batch-size"),
    (["--chunk-tokens", "100000"], "exceeds the embedding model's limit of 254 tokens"),
    (["--chunk-tokens", "4"], "--chunk-tokens"),
    (["--overlap", "-1"], "--overlap"),
    (["--chunk-tokens", "100", "--overlap", "90"], "--overlap must be between 0 and half"),
])
def test_bad_sizes_are_usage_errors_before_anything_is_created(tmp_path: Path, flags: list[str],
                                                                message: str) -> None:
    doc = write_text(tmp_path / "doc.txt", "Some text to ingest.")
    store = tmp_path / "new-store"
    result = invoke("ingest", doc, "--store", store, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "unexpected error" not in result.stderr
    assert not store.exists()


def test_a_named_unsupported_file_fails_and_skipped_files_are_listed(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    write_text(docs / "notes.txt", "The okapi lives in the forests of the Congo. " + real_text_paragraphs(1)[0])
    (docs / "page.xyz").write_text("not a format docqa reads")
    named = invoke("ingest", docs / "page.xyz")
    assert named.exit_code == 1
    assert "page.xyz: unsupported type '.xyz'" in named.stderr

    in_directory = invoke("ingest", docs)
    assert in_directory.exit_code == 0, in_directory.stderr
    summary = in_directory.stdout.strip().splitlines()[-1]
    assert "1 file(s) ingested" in summary and "1 skipped (page.xyz" in summary


def test_search_output_names_page_spans_scores_and_what_the_total_is(tmp_path: Path, embedder: Any) -> None:
    doc = write_text(tmp_path / "two-pages.txt", "The axolotl regrows its limbs.\fThe axolotl lives in lakes.")
    invoke("ingest", doc)
    result = invoke("search", "axolotl", "--scores")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Showing 1 of 1 results (page 0/0):")
    assert re.search(r"two-pages\.txt, pages 1-2 \(chunk 0, score \d\.\d{4}\):", result.stdout), result.stdout
    assert "score" not in invoke("search", "axolotl").stdout

    many = tmp_path / "many"
    for n in range(12):
        write_text(many / f"f{n}.txt", f"Passage {n} about the pangolin and its scales.")
    invoke("ingest", many)
    _, payload = invoke_json("search", "pangolin", "--page-size", 2)
    assert payload["total"] == 13 and not payload["total_is_depth"]  # every chunk is a dense match
    from docqa.archive.store import ArchivalStore
    from docqa.cli.config import resolve

    capped = ArchivalStore(resolve(search_depth=5)).search("pangolin", page_size=2)
    assert capped.format().startswith("Showing 2 of the top 5 results")


def test_a_search_process_embeds_the_query_without_torch(tmp_path: Path, embedder: Any) -> None:
    corpus = tmp_path / "corpus"
    paragraphs = real_text_paragraphs(6)
    for n, text in enumerate(paragraphs):
        write_text(corpus / f"p{n}.txt", text)
    assert invoke("ingest", corpus).exit_code == 0
    query = " ".join(paragraphs[3].split()[:12])
    script = (
        "import sys\n"
        "from docqa.cli import main\n"
        "try:\n"
        f"    main(['search', {query!r}, '--mode', 'dense', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', [m for m in ('torch', 'sentence_transformers', 'transformers', 'onnxruntime', 'tokenizers',\n"
        "                             'chromadb') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ}, check=False)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    import json

    hits = json.loads(done.stdout.split("LOADED")[0])["results"]
    # Neither torch nor onnxruntime nor `tokenizers` (an ASCII query: numpy and docqa's WordPiece), nor
    # chromadb's Python layer. The query vector ranks like torch's: the passage the query was taken from comes
    # first, and its score is the cosine torch gives it.
    assert hits[0]["source"].endswith("p3.txt")
    expected = float(embedder.embed([query])[0] @ embedder.embed([hits[0]["text"]])[0])
    assert hits[0]["score"] == pytest.approx(expected, abs=2e-3)


def test_a_citation_shows_the_words_that_support_the_answer() -> None:
    filler = "The report covers the regional offices and their staffing over the year. " * 6
    passage = filler + "The vault code is 4417 and it is kept by the night warden. " + filler
    excerpt = evidence_excerpt(passage, "The code of the vault is 4417.", width=200)
    assert "The vault code is 4417 and it is kept by the night warden." in excerpt
    assert excerpt.startswith("…") and excerpt.endswith("…") and len(excerpt) <= 202
    assert evidence_excerpt("A short passage.", "anything") == "A short passage."
    assert evidence_excerpt(passage, "unrelated words", width=100).startswith("The report covers")


def _screen(raw: str, width: int = 10**6) -> list[str]:
    """The lines a terminal `width` columns wide shows after `raw`: handles \\r, \\n, ESC[K and ESC[A, as tqdm
    uses them, and the wrap of text written past the last column."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[\d*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\n":
            row += 1
            col = 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("K"):
                lines[row] = lines[row][:col]
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
        else:
            while token:
                if col >= width:  # the terminal wraps onto the next line
                    row, col = row + 1, 0
                    if row == len(lines):
                        lines.append("")
                piece, token = token[: width - col], token[width - col:]
                lines[row] = lines[row][:col] + piece + lines[row][col + len(piece):]
                col += len(piece)
    return lines


def _own_terminal() -> None:
    """In the child: make the pseudo-terminal its controlling terminal, as a shell does, so that a ^C typed
    into it (written to the master) echoes and sends SIGINT."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    hear_ctrl_c()


def _run_on_terminal(args: list[str], on_output: Any = None) -> tuple[int, str]:
    """Run `docqa args` on a 120x40 pseudo-terminal; `on_output(raw so far, master fd)` sees what it printed
    as it comes. Return the exit code and everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([str(DOCQA), *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                               preexec_fn=_own_terminal)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            process.kill()
            pytest.fail(f"docqa {args[0]} printed nothing for 300 s")
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
        if on_output is not None:
            on_output(b"".join(chunks).decode("utf-8", "replace"), master)
    code = process.wait(timeout=60)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_ingest_on_a_terminal_shows_one_bar_with_a_total_and_ends_on_a_clean_summary(tmp_path: Path) -> None:
    pages = ["\n\n".join(real_text_paragraphs(40)[k * 8:(k + 1) * 8]) for k in range(5)]
    doc = write_text(tmp_path / "book.txt", "\f".join(pages))
    code, raw = _run_on_terminal(["ingest", str(doc), "--store", str(tmp_path / "store")])
    assert code == 0, raw
    frames = re.findall(r"ingesting:[^\r\n\x1b]*", raw)
    assert frames, raw
    assert "loading the embedding model…" in raw
    # The bar knows its total (5 pages) from the start, moves through it, and shows a rate and an ETA.
    counts = [tuple(map(int, m)) for m in re.findall(r"\| ?(\d+)/(\d+) \[", raw)]
    assert counts and {total for _, total in counts} == {5}
    assert counts[-1][0] == 5 and len({done for done, _ in counts}) >= 2
    assert any(re.search(r"<\d\d:\d\d, +[\d.]+(page/s|s/page)", f) for f in frames)
    screen = [line for line in _screen(raw) if line.strip()]
    assert screen[-1].startswith("1 file(s) ingested, 0 unchanged, 0 failed; 5 pages"), screen
    assert not [line for line in screen if "ingesting" in line or "loading" in line], screen


def test_ctrl_c_during_an_ingest_leaves_a_clean_terminal_and_the_rerun_resumes(tmp_path: Path) -> None:
    """^C typed at the bar: the terminal echoes "^C" where the cursor is (a full-width bar made it wrap onto
    a line the bar's clearing missed), then docqa clears the line and says what happened, on its own line."""
    paragraphs = real_text_paragraphs(800)
    doc = write_text(tmp_path / "book.txt", "\f".join("\n\n".join(paragraphs[k * 8:(k + 1) * 8]) for k in range(100)))
    typed = []

    def interrupt_once_moving(raw: str, master: int) -> None:
        # at 40 of 100 pages some batches are in Chroma: what a re-run reuses
        if not typed and re.search(r"\| ?([4-9]\d)/100 \[", raw):
            os.write(master, b"\x03")
            typed.append(True)

    code, raw = _run_on_terminal(["ingest", str(doc), "--store", str(tmp_path / "store")], interrupt_once_moving)
    assert typed and code == 130, raw
    screen = [line for line in _screen(raw, width=120) if line.strip()]
    assert screen[-1].startswith("docqa: interrupted; nothing half-written is visible"), screen
    assert not [line for line in screen if "ingesting" in line or "^C" in line or line.strip() == "C"], screen
    rerun = invoke("ingest", doc, "--store", tmp_path / "store")
    assert rerun.exit_code == 0 and "resumed an interrupted ingest" in rerun.stderr, rerun.stderr
