"""What archival memory hands out: chunk and document records, pages of search results, and its errors."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docqa.errors import DocqaError
from docqa.readers import is_paged, location

if TYPE_CHECKING:
    from docqa.chunking import Chunk

SEARCH_MODES = ("hybrid", "dense", "lexical")
# Chroma's rule for collection names; checked before anything is created (the catalog needs it too).
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,498}[A-Za-z0-9]")


class StoreError(DocqaError):
    """The store cannot do what was asked; str() says what to do."""


@dataclass(frozen=True)
class SearchHit:
    record: ChunkRecord
    score: float

    @property
    def pages(self) -> str:
        r = self.record
        return str(r.page_start) if r.page_start == r.page_end else f"{r.page_start}-{r.page_end}"

    @property
    def where(self) -> str:
        """"page 3", or "pages 3-4" for a chunk that spans a page break; for a non-paged document (HTML,
        DOCX, EPUB) its heading path and paragraphs, `section "Install > Linux" (paragraph 12)`."""
        r = self.record
        if not is_paged(r.source):
            return location(r.source, r.page_start, r.page_end, r.section)
        return f"page {self.pages}" if r.page_start == r.page_end else f"pages {self.pages}"

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {"text": r.text, "source": r.source, "page": r.page_start, "page_end": r.page_end,
                "section": r.section, "chunk": r.chunk, "id": r.id, "score": round(self.score, 6)}


@dataclass(frozen=True)
class SearchPage:
    query: str
    page: int
    page_size: int
    total: int
    hits: list[SearchHit] = field(default_factory=list)
    depth: int | None = None  # how deep the ranking went: a total this large means "at least this many"

    @property
    def num_pages(self) -> int:
        return math.ceil(self.total / self.page_size) if self.page_size else 0

    @property
    def total_label(self) -> str:
        """"37 results", or "the top 200 results" when the ranking stopped at its depth (there may be more)."""
        if self.depth is not None and self.total >= self.depth:
            return f"the top {self.total} results"
        return f"{self.total} results"

    def format(self, scores: bool = False) -> str:
        """The text the user and the agent see, headed like the paper's Figure 6."""
        if not self.hits:
            if self.total and self.page >= self.num_pages:
                return f"No results on page {self.page}: there are {self.num_pages} pages (0-{self.num_pages - 1})."
            return "No results found."
        lines = [f"Showing {len(self.hits)} of {self.total_label} (page {self.page}/{self.num_pages - 1}):"]
        for n, hit in enumerate(self.hits, start=self.page * self.page_size + 1):
            r = hit.record
            score = f", score {hit.score:.4f}" if scores else ""
            lines.append(f"[{n}] {r.source}, {hit.where} (chunk {r.chunk}{score}):\n{r.text.strip()}")
        return "\n\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "page": self.page, "num_pages": self.num_pages, "total": self.total,
                "total_is_depth": self.depth is not None and self.total >= self.depth,
                "results": [hit.to_json() for hit in self.hits]}


@dataclass(frozen=True)
class ChunkRecord:
    """One committed chunk as search returns it."""

    id: str
    text: str
    source: str
    page_start: int
    page_end: int
    chunk: int
    content_hash: str
    section: str = ""  # the heading path of a non-paged document's chunk (see docqa.readers.location)


@dataclass(frozen=True)
class DocumentRow:
    source: str
    generation: str
    file_hash: str
    pages: int
    chunks: int


def chunk_id(generation: str, chunk: Chunk) -> str:
    """A chunk's id in both the catalog and Chroma: `<generation>:<index>`."""
    return f"{generation}:{chunk.index}"


def chunk_metadata(generation: str, source: str, chunk: Chunk) -> dict[str, Any]:
    """What Chroma stores beside a chunk's vector and text (search filters and shows it)."""
    return {"source": source, "generation": generation, "chunk": chunk.index, "page_start": chunk.page_start,
            "page_end": chunk.page_end, "section": chunk.section}


def check_collection_name(name: str) -> None:
    if not _COLLECTION_NAME.fullmatch(name):
        raise StoreError(f"invalid collection name '{name}': use 3 to 500 letters, digits, "
                         "'.', '_' or '-', starting and ending with a letter or digit")


def valid_utf8(text: str) -> str:
    """`text` with unpaired surrogates replaced by "?": they come from undecodable bytes in argv (a Latin-1
    terminal) or an LLM's JSON "\\ud800", and the tokenizer, SQLite and stdout accept only valid UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")
