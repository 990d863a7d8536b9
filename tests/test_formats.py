"""HTML, DOCX, EPUB and source-like text as a user ingests them: the needle found at rank 1 with its location
(section heading path and paragraph number), boilerplate left out, and bad files refused in one line each."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from docqa.chunking import chunk_pages
from docqa.readers import location, read_pages
from testkit.documents import real_text_paragraphs, write_empty_file, write_text
from tests.formats import (
    BOILERPLATE,
    DRM_ENCRYPTION,
    Outline,
    epub_members,
    paragraph_number,
    write_docx,
    write_epub,
    write_html_manual,
    write_ole2,
    write_truncated,
)
from tests.helpers import ingest_json, invoke, run_docqa, search_json

FILLER = real_text_paragraphs(40)

HTML_NEEDLE = "On Linux the frobnicator installer keeps its settings in the file quasar-settings.toml."
DOCX_NEEDLE = "The quarterly audit found that the Lisbon warehouse lost eleven pallets of saffron."
EPUB_NEEDLE = "Captain Orla buried the brass astrolabe beneath the lighthouse at Kestrel Point."

MANUAL: Outline = [
    ("h1", "Frobnicator manual"), ("p", FILLER[0]),
    ("h2", "Install"), ("p", FILLER[1]), ("p", FILLER[2]),
    ("h3", "Windows"), ("p", FILLER[3]), ("p", FILLER[4]),
    ("h3", "Linux"), ("p", FILLER[5]), ("p", f"{FILLER[6]} {HTML_NEEDLE} {FILLER[7]}"), ("p", FILLER[8]),
    ("h2", "Usage"), ("p", FILLER[9]), ("p", FILLER[10]),
]
REPORT: Outline = [
    ("h1", "Quarterly report"), ("p", FILLER[11]),
    ("h2", "Warehouses"), ("p", FILLER[12]),
    ("h3", "Porto"), ("p", FILLER[13]), ("p", FILLER[14]),
    ("h3", "Lisbon"), ("p", FILLER[15]), ("p", f"{FILLER[16]} {DOCX_NEEDLE}"), ("p", FILLER[17]),
    ("h2", "Outlook"), ("p", FILLER[18]),
]
CHAPTERS: list[Outline] = [
    [("h1", "The harbour"), ("p", FILLER[19]), ("p", FILLER[20]), ("p", FILLER[21])],
    [("h1", "The storm"), ("p", FILLER[22]), ("h2", "At sea"), ("p", FILLER[23]),
     ("p", f"{EPUB_NEEDLE} {FILLER[24]}"), ("p", FILLER[25])],
    [("h1", "Home again"), ("p", FILLER[26]), ("p", FILLER[27])],
]
BOOK: Outline = [block for chapter in CHAPTERS for block in chapter]

# (file name, outline, needle, a question that finds it, the section the needle is in)
CASES = [
    ("manual.html", MANUAL, HTML_NEEDLE, "where does the installer keep its settings on Linux",
     "Frobnicator manual > Install > Linux"),
    ("report.docx", REPORT, DOCX_NEEDLE, "which warehouse lost pallets of saffron in the audit",
     "Quarterly report > Warehouses > Lisbon"),
    ("book.epub", BOOK, EPUB_NEEDLE, "where did Captain Orla bury the astrolabe", "The storm > At sea"),
]


def write_good(root: Path) -> dict[str, Path]:
    return {
        "manual.html": write_html_manual(root / "manual.html", MANUAL, title="Frobnicator"),
        "report.docx": write_docx(root / "report.docx", REPORT),
        "book.epub": write_epub(root / "book.epub", epub_members(CHAPTERS)),
    }


def page_with(path: Path, needle: str) -> Any:
    return next(page for page in read_pages(path) if needle in page.text)


# -- the needles, at rank 1, with their location -------------------------------------------------------
def test_each_needle_is_found_at_rank_1_with_its_section_and_paragraph(tmp_path: Path, embedder: Any) -> None:
    files = write_good(tmp_path / "docs")
    code, report, stderr = ingest_json(tmp_path / "docs", "--chunk-tokens", 100, "--overlap", 20)
    assert code == 0, stderr
    assert report["files_ingested"] == 3 and report["files_failed"] == [] and report["files_skipped"] == []

    for name, outline, needle, question, section in CASES:
        paragraph = paragraph_number(outline, needle)
        hit = search_json(question)["results"][0]
        assert Path(hit["source"]).name == name, (name, hit)
        assert needle in " ".join(hit["text"].split()), (name, hit["text"])
        assert hit["page"] <= paragraph <= hit["page_end"], (name, paragraph, hit)
        assert hit["section"] == section, (name, hit)

        # What the user (and the agent) reads: the heading path and the paragraphs, not "page N".
        shown = invoke("search", question)
        assert shown.exit_code == 0, shown.stderr
        first = shown.stdout.split("\n\n")[1].splitlines()[0]
        span = str(hit["page"]) if hit["page"] == hit["page_end"] else f"{hit['page']}-{hit['page_end']}"
        paragraphs = "paragraph" if hit["page"] == hit["page_end"] else "paragraphs"
        assert first.startswith(f'[1] {hit["source"]}, section "{section}" ({paragraphs} {span}) (chunk '), first
        assert ", page" not in first, first

        # The reader labels the needle's paragraph with its number and heading path; the chunk keeps it.
        page = page_with(files[name], needle)
        assert (page.number, page.section) == (paragraph, section)
        assert location(files[name], page.number, page.number, page.section) == \
            f'section "{section}" (paragraph {paragraph})'
        chunks = chunk_pages(read_pages(files[name]), embedder.tokenizer, 100, 20)
        chunk = next(c for c in chunks if needle in " ".join(c.text.split()))
        assert chunk.section == page_with(files[name], chunk.text.split("\n")[0]).section
        assert chunk.page_start <= paragraph <= chunk.page_end


def test_paged_files_keep_their_page_locations(tmp_path: Path) -> None:
    assert location(tmp_path / "a.pdf", 3, 3) == "page 3"
    assert location(tmp_path / "a.txt", 1, 2) == "page 1-2"
    assert location(tmp_path / "a.docx", 4, 6, "Results") == 'section "Results" (paragraphs 4-6)'
    assert location(tmp_path / "a.html", 1, 1) == "paragraph 1"  # text above the first heading, no <title>


def test_a_store_made_before_sections_were_kept_still_opens_searches_and_ingests(tmp_path: Path,
                                                                               embedder: Any) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    write_text(old / "notes.txt", f"{FILLER[30]} The spare key hangs behind the blue tapestry.")
    write_html_manual(old / "old-manual.html", [("h1", "Archive"), ("p", f"{FILLER[31]} Bellows are oiled in May.")])
    assert ingest_json(old)[0] == 0
    # The catalog as docqa wrote it before chunks kept their section: no such column.
    catalog = tmp_path / "store" / "docqa.catalog.sqlite3"
    db = sqlite3.connect(catalog)
    db.execute("ALTER TABLE chunks DROP COLUMN section")
    db.commit()
    assert "section" not in {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    db.close()

    hit = search_json("where does the spare key hang", "--mode", "lexical")["results"][0]
    assert Path(hit["source"]).name == "notes.txt" and hit["section"] == "" and hit["page"] == 1
    shown = invoke("search", "where does the spare key hang")
    assert shown.exit_code == 0 and "notes.txt, page 1 (chunk 0" in shown.stdout, shown.stdout + shown.stderr
    hit = search_json("when are the bellows oiled")["results"][0]
    assert Path(hit["source"]).name == "old-manual.html" and hit["section"] == "", hit  # not known for old chunks
    assert 'old-manual.html, paragraph 1 (chunk 0' in invoke("search", "when are the bellows oiled").stdout

    # New documents go into the old store with their sections.
    write_good(new)
    code, report, stderr = ingest_json(new)
    assert code == 0 and report["files_ingested"] == 3, stderr
    with sqlite3.connect(catalog) as db:
        assert "section" in {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    for name, _, needle, question, section in CASES:
        hit = search_json(question)["results"][0]
        assert Path(hit["source"]).name == name and needle in " ".join(hit["text"].split()), (name, hit)
        assert hit["section"] == section
    assert search_json("spare key tapestry", "--mode", "lexical")["total"] == 1


def test_boilerplate_is_left_out(tmp_path: Path, embedder: Any) -> None:
    write_good(tmp_path / "docs")
    assert ingest_json(tmp_path / "docs")[0] == 0
    for kind, word in BOILERPLATE.items():
        assert search_json(word, "--mode", "lexical")["total"] == 0, kind
    # ...while the headings are text of the document.
    hit = search_json("Frobnicator manual Windows", "--mode", "lexical")["results"][0]
    assert Path(hit["source"]).name == "manual.html"


def test_html_tables_lists_code_and_article_headers_are_read(tmp_path: Path) -> None:
    page = write_text(tmp_path / "page.htm", """<html><head><title>Release notes</title></head><body>
<p>Text above any heading.</p>
<article><header><h1>Version 2.0</h1></header>
<ul><li>Faster <b>search</b></li><li>New&nbsp;formats<br>and fixes</li></ul>
<table><tr><th>Flag</th><th>Meaning</th></tr><tr><td>-q</td><td>quiet</td></tr></table>
<pre>docqa ingest ./docs
  --json</pre>
<div hidden>secret draft</div><p aria-hidden="true">icon</p>
</article></body></html>""")
    pages = list(read_pages(page))
    assert [(p.number, p.section, p.text) for p in pages] == [
        (1, "Release notes", "Text above any heading."),
        (2, "Version 2.0", "Version 2.0\nFaster search"),
        (3, "Version 2.0", "New formats\nand fixes"),  # &nbsp; is a space
        (4, "Version 2.0", "Flag | Meaning"),
        (5, "Version 2.0", "-q | quiet"),
        (6, "Version 2.0", "docqa ingest ./docs\n  --json"),
    ]


def test_source_like_text_files_are_read_as_text(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    write_text(docs / "guide.rst", "Guide\n=====\n\nThe ``mangosteen`` option is documented here.\n")
    write_text(docs / "prices.csv", "fruit,price\nrambutan,3.20\nlychee,2.10\n")
    write_text(docs / "config.json", json.dumps({"name": "durian-service", "port": 8080}))
    write_text(docs / "server.log", "2024-01-01 12:00:00 ERROR jackfruit worker crashed\n")
    code, report, stderr = ingest_json(docs)
    assert code == 0 and report["files_ingested"] == 4 and report["files_skipped"] == [], stderr
    for word, name in [("mangosteen", "guide.rst"), ("rambutan", "prices.csv"), ("durian", "config.json"),
                       ("jackfruit", "server.log")]:
        hit = search_json(word)["results"][0]
        assert Path(hit["source"]).name == name and word in hit["text"] and hit["page"] == 1


# -- bad input ----------------------------------------------------------------------------------------
def write_bad(root: Path, good: dict[str, Path]) -> dict[str, str]:
    """Damaged, empty, encrypted and text-less versions of each format; returns name -> expected reason."""
    write_empty_file(root / "empty.html")
    (root / "compressed.html").write_bytes(gzip.compress(good["manual.html"].read_bytes(), mtime=0))
    write_html_manual(root / "menus-only.html", [])
    write_empty_file(root / "empty.docx")
    write_truncated(root / "truncated.docx", good["report.docx"])
    write_ole2(root / "locked.docx")
    write_epub(root / "renamed.docx", epub_members(CHAPTERS))  # a zip, but not a Word document
    write_docx(root / "blank.docx", [])
    write_empty_file(root / "empty.epub")
    write_truncated(root / "truncated.epub", good["book.epub"])
    write_epub(root / "drm.epub", {**epub_members(CHAPTERS), "META-INF/encryption.xml": DRM_ENCRYPTION})
    write_epub(root / "images.epub", epub_members([[("p", "")], [("p", " ")]]))
    broken = epub_members(CHAPTERS)
    broken["OEBPS/content.opf"] = broken["OEBPS/content.opf"][:200]
    write_epub(root / "broken-opf.epub", broken)
    return {
        "empty.html": "empty file", "compressed.html": "binary content", "menus-only.html": "no text",
        "empty.docx": "empty file", "truncated.docx": "damaged DOCX", "locked.docx": "encrypted",
        "renamed.docx": "not a DOCX", "blank.docx": "no text",
        "empty.epub": "empty file", "truncated.epub": "damaged EPUB", "drm.epub": "encrypted EPUB (DRM",
        "images.epub": "no text", "broken-opf.epub": "damaged EPUB",
    }


@pytest.mark.slow
def test_bad_files_are_one_line_errors_and_the_good_ones_go_in(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    good = write_good(docs)
    bad = write_bad(docs, good)

    done = run_docqa("ingest", docs, "--json")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["files_ingested"] == 3
    failed = {Path(f["path"]).name: f["error"] for f in report["files_failed"]}
    assert set(failed) == set(bad)
    lines = done.stderr.splitlines()
    for name, reason in bad.items():
        assert reason in failed[name], (name, failed[name])
        assert "\n" not in failed[name]
        assert len([line for line in lines if name in line]) == 1, (name, lines)  # one line, naming the file

    for name, _, needle, question, _ in CASES:
        hit = search_json(question)["results"][0]
        assert Path(hit["source"]).name == name and needle in " ".join(hit["text"].split())
