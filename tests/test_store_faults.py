"""A damaged store: a damaged or emptied catalog, damaged or missing Chroma files. Every command says so in
one line naming the file and `docqa repair`, never a traceback or a silently empty answer, and `docqa repair`
(or, for the vectors, the next ingest) brings back a store that answers as before.

Each case damages a copy of one real store, ingested once per module, and runs `docqa` as a subprocess, the
way a user would (a damaged vector index can crash the process that loads it: this must not be the test's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from testkit.documents import real_text_paragraphs, write_text
from tests.helpers import run_docqa

CATALOG = "docqa.catalog.sqlite3"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a store of two documents whose vector index is saved on disk, the corpus it was made from)."""
    from docqa.archive.chroma import local_client

    work = tmp_path_factory.mktemp("faults")
    corpus = work / "corpus"
    write_text(corpus / "a.txt", "\n\n".join(real_text_paragraphs(24)) + "\nThe code word is zqxalpha.")
    write_text(corpus / "b.txt", "\n\n".join(real_text_paragraphs(48)[24:]) + "\nThe code word is zqxbeta.")
    store = work / "store"
    # Chroma saving its index every 8 vectors, so that this small store has index files to damage.
    local_client(store).create_collection("docqa", embedding_function=None,
                                           metadata={"hnsw:space": "cosine", "hnsw:sync_threshold": 8})
    done = run_docqa("ingest", corpus, "--store", store, "-q")
    assert done.returncode == 0, done.stderr
    assert list((store / "chroma").glob("*/index_metadata.pickle")), "no saved index to damage"
    return store, corpus


def damaged_copy(pristine: tuple[Path, Path], tmp_path: Path, damage: str) -> Path:
    store = tmp_path / "damaged"
    shutil.copytree(pristine[0], store)
    segment = next(p for p in (store / "chroma").iterdir() if p.is_dir())
    kind, _, name = damage.partition(":")
    target = {"catalog": store / CATALOG, "chroma.sqlite3": store / "chroma" / "chroma.sqlite3"}.get(
        name, segment / name)
    if name == "chroma":
        shutil.rmtree(store / "chroma")
    elif kind == "delete":
        target.unlink()
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif kind == "garble-header":
        data = bytearray(target.read_bytes())
        data[:100] = b"\xa5" * 100
        target.write_bytes(bytes(data))
    elif kind == "garble-front":  # for data_level0.bin: the first vectors' links
        data = bytearray(target.read_bytes())
        data[16:4112] = b"\xa5" * 4096
        target.write_bytes(bytes(data))
    elif kind == "garble-middle":
        data = bytearray(target.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8192] = b"\xa5" * min(8192, len(data) - middle)
        target.write_bytes(bytes(data))
    else:
        raise ValueError(damage)
    return store


def one_line_pointing_at_repair(result: Any, file: str) -> None:
    """The command failed with one line that names `file` and `docqa repair`, and nothing else on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("docqa: error:") and file in lines[0] and "docqa repair" in lines[0], lines[0]
    assert "unexpected" not in lines[0] and "Traceback" not in result.stderr


def finds(store: Path, word: str, mode: str) -> bool:
    done = run_docqa("search", word, "--store", store, "--mode", mode, "--json", "--page-size", 20)
    assert done.returncode == 0, done.stderr
    return any(word in hit["text"] for hit in json.loads(done.stdout)["results"])


def repaired(store: Path) -> dict[str, Any]:
    done = run_docqa("repair", "--store", store, "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def answers_as_before(store: Path, corpus: Path) -> None:
    listing = run_docqa("list", "--store", store, "--json")
    assert listing.returncode == 0, listing.stderr
    assert sorted(Path(d["source"]).name for d in json.loads(listing.stdout)) == ["a.txt", "b.txt"]
    for word in ("zqxalpha", "zqxbeta"):
        assert finds(store, word, "lexical") and finds(store, word, "dense"), word


@pytest.mark.parametrize("damage", ["truncate:catalog", "garble-middle:catalog", "garble-header:catalog"])
def test_a_damaged_catalog_is_one_line_on_every_command_and_repair_rebuilds_it_from_chroma(
        pristine: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    store = damaged_copy(pristine, tmp_path, damage)
    corpus = pristine[1]
    for args in (["list"], ["search", "zqxalpha"], ["ingest", corpus, "-q"]):
        done = run_docqa(*args, "--store", store)
        # SQLite finds damage where it reads: a command that reads no damaged page may still succeed
        if done.returncode or damage != "garble-middle:catalog":
            one_line_pointing_at_repair(done, CATALOG)
    report = repaired(store)
    assert any("catalog" in problem and "damaged" in problem for problem in report["problems"])
    assert report["catalog"]["rebuilt_from_chroma"] and report["catalog"]["documents"] == 2
    assert list(store.glob(f"{CATALOG}.damaged-*")), "the damaged catalog was not kept aside"
    answers_as_before(store, corpus)
    # The files are unchanged on disk: repair recognised them, so nothing is embedded again.
    again = run_docqa("ingest", corpus, "--store", store, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["files_unchanged"] == 2, again.stdout


def test_an_empty_catalog_beside_a_full_chroma_is_no_empty_store(pristine: tuple[Path, Path], tmp_path: Path) -> None:
    store = damaged_copy(pristine, tmp_path, "empty:catalog")
    for args in (["list"], ["search", "zqxalpha"], ["ingest", pristine[1], "-q"]):
        one_line_pointing_at_repair(run_docqa(*args, "--store", store), CATALOG)
    assert repaired(store)["catalog"]["documents"] == 2
    answers_as_before(store, pristine[1])


@pytest.mark.parametrize("damage", ["garble-header:chroma.sqlite3", "truncate:chroma.sqlite3",
                                    "empty:chroma.sqlite3", "delete:chroma"])
def test_damaged_or_missing_chroma_files_are_said_then_repaired(pristine: tuple[Path, Path], tmp_path: Path,
                                                                 damage: str) -> None:
    store = damaged_copy(pristine, tmp_path, damage)
    listing = run_docqa("list", "--store", store)  # the catalog alone answers
    assert listing.returncode == 0 and "2 document(s)" in listing.stdout, listing.stderr
    # An emptied or deleted Chroma reads as an empty one: dense search must not answer "No results found".
    one_line_pointing_at_repair(run_docqa("search", "zqxalpha", "--store", store, "--mode", "dense"), "chroma")
    if damage in ("delete:chroma", "empty:chroma.sqlite3"):
        # The next ingest rebuilds them too: it used to say "unchanged" and leave dense search empty for good.
        done = run_docqa("ingest", pristine[1], "--store", store, "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["files_unchanged"] == 2, done.stderr
        assert "rebuilding it from the catalog" in done.stderr
    else:
        report = repaired(store)
        assert report["vectors"]["rebuilt_from_catalog"] and report["vectors"]["chunks"] > 0
    answers_as_before(store, pristine[1])


@pytest.mark.parametrize("damage", ["delete:index_metadata.pickle", "empty:data_level0.bin",
                                    "truncate:header.bin", "garble-front:data_level0.bin", "delete:link_lists.bin"])
def test_a_damaged_vector_index_is_rebuilt_by_the_next_ingest_without_crashing(
        pristine: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    store = damaged_copy(pristine, tmp_path, damage)
    search = run_docqa("search", "zqxalpha", "--store", store, "--mode", "dense")
    assert search.returncode in (0, 1) and "Traceback" not in search.stderr, (search.returncode, search.stderr)
    if search.returncode:
        one_line_pointing_at_repair(search, "chroma")
    # A truncated header.bin, or garbled links in data_level0.bin, made Chroma crash the process that loaded them
    # (SIGSEGV): found before Chroma loads them.
    done = run_docqa("ingest", pristine[1], "--store", store, "--json")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert json.loads(done.stdout)["files_unchanged"] == 2
    assert "rebuilding it from the catalog" in done.stderr
    answers_as_before(store, pristine[1])
    assert repaired(store)["problems"] == []


def test_repair_rebuilds_the_catalog_of_a_file_changed_since_as_chroma_has_it_and_the_next_ingest_updates_it(
        pristine: tuple[Path, Path], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(pristine[1], corpus)
    store = tmp_path / "store"
    assert run_docqa("ingest", corpus, "--store", store, "-q").returncode == 0
    (store / CATALOG).write_bytes(b"")
    write_text(corpus / "a.txt", (corpus / "a.txt").read_text() + "\nA later line: zqxgamma.")
    report = repaired(store)
    assert [Path(s).name for s in report["catalog"]["reembed_on_next_ingest"]] == ["a.txt"]
    assert finds(store, "zqxalpha", "lexical")  # the version Chroma holds, until the next ingest
    again = run_docqa("ingest", corpus, "--store", store, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_ingested"] == 1 and json.loads(again.stdout)["files_unchanged"] == 1
    assert finds(store, "zqxgamma", "lexical") and finds(store, "zqxgamma", "dense")


def test_with_both_halves_damaged_repair_says_to_ingest_again_and_leaves_a_store_that_takes_it(
        pristine: tuple[Path, Path], tmp_path: Path) -> None:
    store = damaged_copy(pristine, tmp_path, "truncate:catalog")
    shutil.rmtree(store / "chroma")
    done = run_docqa("repair", "--store", store, "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["lost"] is True
    assert done.stderr.strip().splitlines()[-1].startswith("docqa: error:") and "ingest" in done.stderr
    assert list(store.glob(f"{CATALOG}.damaged-*"))
    assert run_docqa("ingest", pristine[1], "--store", store, "-q").returncode == 0
    answers_as_before(store, pristine[1])
