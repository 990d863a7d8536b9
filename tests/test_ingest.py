"""`docqa ingest` and `docqa delete` as a user sees them: chunks that fit the model, pages, idempotency,
bad input, and a store that stays consistent through crashes."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from docqa.chunking import chunk_pages
from docqa.ingest.files import file_hash, source_of
from docqa.readers import Page, read_pages
from testkit.documents import (
    LATIN1_TEXT,
    real_text_paragraphs,
    write_binary_txt,
    write_corrupt_pdf,
    write_empty_file,
    write_encrypted_pdf,
    write_image_only_pdf,
    write_latin1_txt,
    write_multipage_pdf,
    write_text,
    write_truncated_pdf,
)
from tests.helpers import (
    assert_invisible,
    ingest_json,
    invoke,
    open_store,
    run_docqa,
    search_json,
    stored_chunks,
    write_pending,
)

MODEL_LIMIT = 254  # all-MiniLM-L6-v2 embeds 256 word pieces, two of them [CLS] and [SEP]


def pages_of_real_text(count: int, chars: int = 3000, skip: int = 0) -> list[str]:
    """`count` pages of Wikipedia passages, each about `chars` long (fits one A4 page)."""
    paragraphs = iter(real_text_paragraphs(skip + count * 12)[skip:])
    pages = []
    for _ in range(count):
        page = ""
        while len(page) < chars:
            page += next(paragraphs) + "\n"
        pages.append(page)
    return pages


def squeeze(text: str) -> str:
    return "".join(text.split())


# -- chunk size vs. the model's limit ---------------------------------------------------------------
def test_every_chunk_fits_the_model_and_neighbours_overlap(tmp_path: Path, embedder: Any) -> None:
    pdf = write_multipage_pdf(tmp_path / "long.pdf", pages_of_real_text(6))
    code, report, _ = ingest_json(pdf, "--chunk-tokens", MODEL_LIMIT, "--overlap", 40)
    assert code == 0 and report["files_ingested"] == 1

    chunks = stored_chunks()
    assert len(chunks) == report["chunks_added"] >= 12
    tokenizer = embedder.tokenizer
    for text, _ in chunks:
        pieces = tokenizer(text, add_special_tokens=True)["input_ids"]
        assert len(pieces) <= embedder._model.max_seq_length == MODEL_LIMIT + 2, text[:80]
    # Most chunks use the room they have: sizes are in the model's tokens, not words or characters.
    sizes = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in chunks]
    assert sorted(sizes)[len(sizes) // 2] >= MODEL_LIMIT - 20

    for (before, _), (after, _) in itertools.pairwise(chunks):
        opening = " ".join(after.split()[:6])
        assert opening in " ".join(before.split()), "neighbouring chunks share no text"


def test_without_overlap_the_chunks_hold_the_whole_text_once(tmp_path: Path, embedder: Any) -> None:
    pdf = write_multipage_pdf(tmp_path / "long.pdf", pages_of_real_text(3))
    code, _, _ = ingest_json(pdf, "--overlap", 0)
    assert code == 0
    extracted = "".join(page.text for page in read_pages(pdf))
    assert squeeze("".join(text for text, _ in stored_chunks())) == squeeze(extracted)


def test_chunk_size_past_the_model_limit_is_a_usage_error(tmp_path: Path, embedder: Any) -> None:
    doc = write_text(tmp_path / "a.txt", real_text_paragraphs(1)[0])
    result = invoke("ingest", doc, "--chunk-tokens", 300, "-q")
    assert result.exit_code == 2
    assert "300" in result.stderr and str(MODEL_LIMIT) in result.stderr
    assert "Traceback" not in result.output
    assert stored_chunks() == []
    assert invoke("ingest", doc, "--overlap", 150, "-q").exit_code == 2  # more than half a chunk


# -- page numbers -----------------------------------------------------------------------------------
MARKERS = ["quokka", "narwhal", "axolotl", "pangolin", "okapi"]


def paged_pdf(path: Path) -> Path:
    """Five pages with one distinct marker word each, mid-page with 800+ characters on either side;
    page 1 ends with 'flamingo' and page 2 starts with 'Heron'."""
    paragraphs = iter(real_text_paragraphs(60))

    def text_of(chars: int) -> str:
        text = ""
        while len(text) < chars:
            text += next(paragraphs) + "\n"
        return text

    pages = [f"{text_of(800)}The {marker} is only ever mentioned on this page.\n{text_of(800)}" for marker in MARKERS]
    pages[0] += "This first page ends with a flamingo."
    pages[1] = "Heron opens the second page. " + pages[1]
    return write_multipage_pdf(path, pages)


def test_search_reports_the_page_a_word_is_on(tmp_path: Path, embedder: Any) -> None:
    pdf = paged_pdf(tmp_path / "paged.pdf")
    assert ingest_json(pdf, "--chunk-tokens", 100, "--overlap", 20)[0] == 0

    for page, marker in enumerate(MARKERS, start=1):
        results = search_json(marker)["results"]
        assert marker in results[0]["text"]
        for hit in results:
            if marker in hit["text"]:
                assert (hit["page"], hit["page_end"]) == (page, page), (marker, hit)

    # The chunk across the page break says so, in JSON and in text.
    hit = search_json("flamingo heron", "--mode", "lexical")["results"][0]
    assert "flamingo" in hit["text"] and "Heron" in hit["text"]
    assert (hit["page"], hit["page_end"]) == (1, 2)
    text = invoke("search", "flamingo heron", "--mode", "lexical", "--page-size", 1).stdout
    assert re.search(r"paged\.pdf, pages 1-2\b", text), text


# -- idempotency, replacement, delete ---------------------------------------------------------------
def small_corpus(root: Path) -> dict[str, Path]:
    paragraphs = real_text_paragraphs(6)
    return {
        "a": write_text(root / "docs" / "a.txt", "Alpha notes mention the word marmalade.\n" + paragraphs[0]),
        "b": write_text(root / "docs" / "sub" / "b.md", "# Beta\nBeta mentions tangerine.\n" + paragraphs[1]),
        "c": write_multipage_pdf(root / "docs" / "sub" / "c.pdf", paragraphs[2:4]),
        "other": write_text(root / "elsewhere" / "d.txt", "Delta keeps a gooseberry.\n" + paragraphs[4]),
    }


def listed() -> dict[str, int]:
    result = invoke("list", "--json")
    assert result.exit_code == 0
    return {Path(doc["source"]).name: doc["chunks"] for doc in json.loads(result.stdout)}


def test_second_ingest_adds_nothing(tmp_path: Path, embedder: Any) -> None:
    files = small_corpus(tmp_path)
    code, first, _ = ingest_json(tmp_path / "docs", files["other"])
    assert code == 0 and first["files_ingested"] == 4 and first["chunks_added"] > 0
    assert first["chunks_total"] == first["chunks_added"] == len(stored_chunks())

    code, second, _ = ingest_json(tmp_path / "docs", files["other"])
    assert code == 0
    assert (second["files_ingested"], second["files_unchanged"], second["chunks_added"]) == (0, 4, 0)
    assert second["chunks_total"] == first["chunks_total"] == len(stored_chunks())


def test_changed_file_replaces_its_chunks(tmp_path: Path, embedder: Any) -> None:
    files = small_corpus(tmp_path)
    ingest_json(tmp_path / "docs")
    before = listed()
    assert search_json("marmalade", "--mode", "lexical")["total"] == 1

    long_text = "Alpha now talks about apricots.\n" + "\n".join(real_text_paragraphs(12)[6:12])
    write_text(files["a"], long_text)
    code, report, _ = ingest_json(tmp_path / "docs")
    assert code == 0 and (report["files_ingested"], report["files_unchanged"]) == (1, 2)

    assert search_json("marmalade", "--mode", "lexical")["total"] == 0
    assert "apricots" in search_json("apricots")["results"][0]["text"]
    after = listed()
    assert after["a.txt"] == report["chunks_added"] > before["a.txt"]
    assert after["b.md"] == before["b.md"] and after["c.pdf"] == before["c.pdf"]
    # Nothing of the old version is left in Chroma either.
    assert report["chunks_total"] == sum(after.values()) == len(stored_chunks())
    assert not [text for text, _ in stored_chunks() if "marmalade" in text]


def test_other_chunking_settings_re_ingest_and_the_same_ones_do_not(tmp_path: Path, embedder: Any) -> None:
    files = small_corpus(tmp_path)
    code, first, _ = ingest_json(tmp_path / "docs")
    assert code == 0 and first["files_ingested"] == 3

    code, small, _ = ingest_json(tmp_path / "docs", "--chunk-tokens", 60, "--overlap", 10)
    assert code == 0 and (small["files_ingested"], small["files_unchanged"]) == (3, 0)
    assert small["chunks_added"] > first["chunks_added"]
    # Each file's old version is replaced, as when its text changes: only the new chunks are left.
    chunks = stored_chunks()
    assert small["chunks_total"] == small["chunks_added"] == len(chunks) == sum(listed().values())
    assert max(embedder.count_tokens(text) for text, _ in chunks) <= 60
    assert search_json("marmalade", "--mode", "lexical")["total"] == 1

    code, same, _ = ingest_json(tmp_path / "docs", "--chunk-tokens", 60, "--overlap", 10)
    assert code == 0 and (same["files_ingested"], same["files_unchanged"], same["chunks_added"]) == (0, 3, 0)
    assert same["chunks_total"] == small["chunks_total"]

    code, no_overlap, _ = ingest_json(tmp_path / "docs", "--chunk-tokens", 60, "--overlap", 0)
    assert code == 0 and no_overlap["files_ingested"] == 3
    a_chunks = [text for text, meta in stored_chunks() if meta["source"] == source_of(files["a"])]
    assert squeeze("".join(a_chunks)) == squeeze(files["a"].read_text())  # no text shared by neighbours now

    code, back, _ = ingest_json(tmp_path / "docs")  # the first settings again: the first chunks again
    assert code == 0 and back["files_ingested"] == 3
    assert back["chunks_total"] == first["chunks_total"] == len(stored_chunks())


def test_many_small_files_share_store_writes_and_each_goes_in_whole(tmp_path: Path, embedder: Any) -> None:
    notes = tmp_path / "notes"
    paragraphs = real_text_paragraphs(40)
    for n, paragraph in enumerate(paragraphs):
        write_text(notes / f"note-{n:02d}.txt", f"Note {n} holds the word zqx{n:02d}note.\n{paragraph}")
    write_binary_txt(notes / "note-20-bad.txt")  # fails among files whose chunks share a store write
    code, report, stderr = ingest_json(notes, "--batch-size", 4)  # a store write every 16 chunks
    assert code == 1 and report["files_ingested"] == 40
    assert [Path(f["path"]).name for f in report["files_failed"]] == ["note-20-bad.txt"]
    assert "note-20-bad.txt" in stderr
    docs = listed()
    assert len(docs) == 40 and "note-20-bad.txt" not in docs
    assert report["chunks_total"] == report["chunks_added"] == sum(docs.values()) == len(stored_chunks())
    for n in (0, 19, 21, 39):
        hits = search_json(f"zqx{n:02d}note", "--mode", "lexical")["results"]
        assert [Path(hit["source"]).name for hit in hits] == [f"note-{n:02d}.txt"]

    code, again, _ = ingest_json(notes, "--batch-size", 4)
    assert (again["files_ingested"], again["files_unchanged"], again["chunks_added"]) == (0, 40, 0)


def test_delete_a_file_a_directory_and_a_missing_path(tmp_path: Path, embedder: Any) -> None:
    files = small_corpus(tmp_path)
    ingest_json(tmp_path / "docs", files["other"])

    result = invoke("delete", files["a"])
    assert result.exit_code == 0 and f"removed: {source_of(files['a'])}" in result.stdout
    assert search_json("marmalade", "--mode", "lexical")["total"] == 0
    assert set(listed()) == {"b.md", "c.pdf", "d.txt"}

    result = invoke("ingest", "--delete", tmp_path / "docs" / "sub", "-q")  # a directory: all under it
    assert result.exit_code == 0
    assert set(listed()) == {"d.txt"}
    assert search_json("tangerine", "--mode", "lexical")["total"] == 0
    assert len(stored_chunks()) == listed()["d.txt"]

    result = invoke("delete", files["a"])
    assert result.exit_code == 1 and "not in the store" in result.stderr
    assert set(listed()) == {"d.txt"}


def test_invalid_collection_name_is_a_clear_error(embedder: Any) -> None:
    result = invoke("list", "--collection", "x")
    assert result.exit_code == 1 and "invalid collection name 'x'" in result.stderr


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_files_are_reported_and_good_ones_go_in(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "mixed"
    paragraphs = real_text_paragraphs(4)
    write_multipage_pdf(docs / "good.pdf", [paragraphs[0] + " The wombat digs.", paragraphs[1]])
    write_text(docs / "good.txt", "A capybara in plain text. " + paragraphs[2])
    write_text(docs / "notes.md", "# Notes\nThe meerkat stands guard. " + paragraphs[3])
    write_latin1_txt(docs / "latin1.txt")
    bad = {
        "empty.txt": (write_empty_file, "empty"),
        "empty.pdf": (write_empty_file, "empty"),
        "encrypted.pdf": (lambda p: write_encrypted_pdf(p, "locked text"), "password"),
        "corrupt.pdf": (write_corrupt_pdf, "corrupt"),
        "truncated.pdf": (write_truncated_pdf, "truncated"),
        "scan.pdf": (write_image_only_pdf, "no extractable text"),
        "binary.txt": (write_binary_txt, "binary"),
    }
    for name, (writer, _) in bad.items():
        writer(docs / name)
    (docs / "report.xlsx").write_bytes(b"PK\x03\x04 not read by docqa")
    missing = tmp_path / "missing.pdf"

    # The scenario, run as a user runs it.
    done = run_docqa("ingest", docs, missing, "--json")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {"files_ingested", "files_unchanged", "files_failed", "chunks_added", "chunks_total",
            "seconds"} <= set(report)
    assert report["files_ingested"] == 4 and report["chunks_added"] == report["chunks_total"] > 0
    failed = {Path(f["path"]).name: f["error"] for f in report["files_failed"]}
    assert all(set(f) == {"path", "error"} for f in report["files_failed"])
    assert set(failed) == set(bad) | {"missing.pdf"}
    for name, (_, reason) in bad.items():
        assert reason in failed[name], (name, failed[name])
    assert "no such file" in failed["missing.pdf"]

    lines = done.stderr.splitlines()
    for name, error in failed.items():  # one line per bad file, naming it and the reason
        assert [line for line in lines if name in line and error in line], name
    assert [line for line in lines if "report.xlsx" in line and "unsupported" in line]
    note = [line for line in lines if "latin1.txt" in line]
    assert note and "Latin-1" in note[0] and "UTF-8" in note[0]

    for word, name in [("wombat", "good.pdf"), ("capybara", "good.txt"), ("meerkat", "notes.md")]:
        assert Path(search_json(word)["results"][0]["source"]).name == name
    hit = search_json("façade naïve", "--mode", "lexical")["results"][0]
    assert Path(hit["source"]).name == "latin1.txt" and hit["text"].strip() == LATIN1_TEXT.strip()

    code, again, stderr = ingest_json(docs, missing)
    assert code == 1 and "Traceback" not in stderr
    assert (again["files_ingested"], again["files_unchanged"], again["chunks_added"]) == (0, 4, 0)
    assert again["chunks_total"] == report["chunks_total"]


def test_nonexistent_path_alone_fails_cleanly(tmp_path: Path, embedder: Any) -> None:
    result = invoke("ingest", tmp_path / "nowhere.txt", "-q")
    assert result.exit_code == 1
    assert "nowhere.txt: no such file" in result.stderr and "Traceback" not in result.output


# -- crash consistency --------------------------------------------------------------------------------
def test_an_interrupted_ingest_is_never_visible_and_is_cleaned(tmp_path: Path, embedder: Any) -> None:
    kept = write_text(tmp_path / "kept.txt", "The original kept document talks about lighthouses.")
    other = write_text(tmp_path / "other.txt", "Another document about windmills.")
    ghost = tmp_path / "ghost.txt"
    assert ingest_json(kept)[0] == 0

    store = open_store()
    write_pending(store, embedder, source_of(ghost), "A ghostly document about poltergeists.")
    write_pending(store, embedder, source_of(kept), "A replacement never committed, about volcanoes.")
    del store  # the process dies here: no commit, no abort

    assert len(stored_chunks()) == 3  # the pending chunks are physically in Chroma...
    assert_invisible("poltergeists")  # ...but search never shows them
    assert_invisible("volcanoes")
    assert "lighthouses" in search_json("lighthouses")["results"][0]["text"]
    assert set(listed()) == {"kept.txt"}

    code, report, _ = ingest_json(other)  # the next writer cleans up
    assert code == 0 and report["chunks_total"] == 2
    texts = [text for text, _ in stored_chunks()]
    assert len(texts) == 2 and not [t for t in texts if "poltergeists" in t or "volcanoes" in t]
    assert set(listed()) == {"kept.txt", "other.txt"}


def test_a_store_write_of_several_files_killed_before_their_commit(tmp_path: Path, embedder: Any) -> None:
    kept = write_text(tmp_path / "kept.txt", "The original kept document talks about lighthouses.")
    assert ingest_json(kept)[0] == 0
    files = [write_text(tmp_path / "one.txt", "The first new document is about poltergeists."),
             write_text(tmp_path / "two.txt", "The second new document is about banshees."),
             write_text(kept, "The kept document replaced, now about volcanoes.")]

    # What `docqa ingest` leaves when killed after one store write held all three files, before any commit.
    store = open_store()
    items = []
    for path in files:
        source = source_of(path)
        generation = store.begin_document(source, file_hash(path))
        chunks = list(chunk_pages([Page(1, path.read_text())], embedder.tokenizer, 200, 40))
        store.record_chunks(generation, source, chunks)
        items += [(generation, source, chunk) for chunk in chunks]
    store.add_vectors(items, embedder.embed([chunk.text for _, _, chunk in items]))
    del store

    assert len(stored_chunks()) == 4
    for word in ("poltergeists", "banshees", "volcanoes"):
        assert_invisible(word)
    assert "lighthouses" in search_json("lighthouses")["results"][0]["text"]
    assert set(listed()) == {"kept.txt"}

    # The re-run stores each file exactly once.
    code, report, _ = ingest_json(*files)
    assert code == 0 and (report["files_ingested"], report["files_unchanged"]) == (3, 0)
    texts = sorted(text for text, _ in stored_chunks())
    assert texts == sorted(path.read_text() for path in files)
    assert set(listed()) == {"kept.txt", "one.txt", "two.txt"}
