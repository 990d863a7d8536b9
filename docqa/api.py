"""docqa as a library: a store you ingest into, search, and ask questions of.

    import docqa

    store = docqa.open_store("my-store")                     # a local directory (created on first ingest)
    report = store.ingest(["report.pdf", "notes/"])            # what went in, what failed and why
    page = store.search("error code E1234")                    # page 0 of the hybrid ranking, 5 hits
    answer = store.ask("What did the audit conclude?", model="llama3.1", base_url="http://localhost:11434/v1")

Settings are keyword arguments with the command line's defaults. Nothing here reads environment variables:
pass the model, URL and key yourself (the `docqa` command reads DOCQA_* and OPENAI_* for you).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docqa.archive.records import DocumentRow, SearchPage
from docqa.ingest.report import IngestReport
from docqa.settings import Settings

if TYPE_CHECKING:
    from docqa.agent.llm import ChatClient
    from docqa.agent.result import AgentResult
    from docqa.archive.repair import RepairReport
    from docqa.archive.store import ArchivalStore


class Store:
    """Archival memory: one store directory (or Chroma server collection) and what it holds."""

    def __init__(self, settings: Settings) -> None:
        from docqa.archive.store import ArchivalStore

        self.settings = settings
        self._archive = ArchivalStore(settings)

    @property
    def archive(self) -> ArchivalStore:
        """The archival store underneath (docqa.archive.store), for what this API does not cover."""
        return self._archive

    def ingest(self, paths: Iterable[str | Path], *, on_notice: Callable[[str], None] | None = None,
               progress: bool = False, on_status: Callable[[str], None] | None = None) -> IngestReport:
        """Add files and directories (recursively); returns the IngestReport (counts, failures, reasons).

        Unchanged files are skipped; a bad file is reported through `on_notice` and in the report, and the
        others still go in. `progress` draws the ingest bar on stderr; `on_status` gets a transient state line
        ("loading the embedding model…"), and "" when it is over.
        """
        from docqa.ingest.pipeline import Ingestor

        notes: list[str] = []
        ingestor = Ingestor(self._archive, progress=progress, notice=on_notice or notes.append, status=on_status)
        return ingestor.run([Path(p).expanduser() for p in paths])

    def search(self, query: str, page: int = 0, page_size: int = 5, mode: str = "hybrid") -> SearchPage:
        """One page of results (a SearchPage: `.hits`, `.total`, `.num_pages`, `.format()`), 0-based pages.

        `mode`: "hybrid" (meaning and exact words), "dense" or "lexical".
        """
        return self._archive.search(query, page=page, page_size=page_size, mode=mode)

    def delete(self, paths: Iterable[str | Path]) -> tuple[list[str], list[str]]:
        """Remove documents (or every document under a directory); (removed sources, paths not in the store)."""
        from docqa.ingest.pipeline import delete_paths

        return delete_paths(self._archive, [Path(p).expanduser() for p in paths])

    def count(self) -> int:
        """How many chunks the store holds (of committed documents)."""
        return self._archive.count()

    def documents(self) -> list[DocumentRow]:
        """What the store holds: one row per document (`.source`, `.pages`, `.chunks`, `.file_hash`)."""
        return self._archive.documents()

    def ask(self, question: str, *, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
            client: ChatClient | None = None, llm_mode: str = "auto", context_window: int = 8192,
            max_steps: int = 20, llm_timeout: float = 120.0, fold_system: bool = False,
            session: str | None = None, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> AgentResult:
        """Answer `question` with the MemGPT agent; returns an AgentResult (`.answer`, `.status`, `.citations`,
        `.steps`, `.llm_calls`, `.error`). The status is "answered", "step_limit" or "error"; nothing raises.

        Give `base_url` (any OpenAI-compatible server: without `model`, its only model is used, and the window
        is the smaller of `context_window` and the one the server runs) or `api_key` for OpenAI itself, or a
        ready `docqa.agent.llm.ChatClient` as `client`. `session` keeps memory across calls in the store's
        sessions file. `on_event(kind, data)` sees each step, as `docqa ask --trace` prints them.
        """
        from docqa.agent.connect import connect
        from docqa.agent.loop import Agent
        from docqa.agent.memory import SessionStore
        from docqa.agent.replies import LLMError
        from docqa.agent.result import AgentResult

        settings = self.settings.with_(model=model, base_url=base_url, api_key=api_key, llm_mode=llm_mode,
                                       context_window=context_window, max_steps=max_steps, llm_timeout=llm_timeout,
                                       fold_system=fold_system)
        if client is None:
            if not (api_key or base_url):
                return AgentResult(answer="", status="error", error="no API key: pass api_key=... for OpenAI, or "
                                   "base_url=... for a local OpenAI-compatible server")
            try:
                client, settings = connect(settings, on_event)
            except LLMError as exc:
                return AgentResult(answer="", status="error", error=str(exc))
        sessions = SessionStore(settings.store_dir / "sessions.sqlite3") if session else None
        agent = Agent(settings, self._archive, client, session=session or "ask", sessions=sessions, on_event=on_event)
        return agent.ask(question)


def open_store(path: str | Path | None = None, *, chroma_url: str | None = None, collection: str = "docqa",
               embedding_model: str | None = None, embedding_backend: str = "torch", chunk_tokens: int = 200,
               overlap_tokens: int = 40, batch_size: int = 32,
               chroma_timeout: float = Settings.chroma_timeout) -> Store:
    """A store in directory `path` (the per-user data directory if None), or in a Chroma server at `chroma_url`
    (whose replies are waited for `chroma_timeout` seconds at most, each)."""
    from docqa.settings import DEFAULT_EMBEDDING_MODEL, default_store_dir

    store_dir = Path(path).expanduser() if path is not None else default_store_dir()
    settings = Settings(store_dir=store_dir, collection=collection, chroma_url=chroma_url,
                        embedding_model=embedding_model or DEFAULT_EMBEDDING_MODEL,
                        embedding_backend=embedding_backend, chunk_tokens=chunk_tokens,
                        overlap_tokens=overlap_tokens, batch_size=batch_size, chroma_timeout=chroma_timeout)
    return Store(settings)


def repair_store(path: str | Path | None = None, *, collection: str = "docqa", embedding_model: str | None = None,
                 embedding_backend: str = "torch", chunk_tokens: int = 200, overlap_tokens: int = 40,
                 batch_size: int = 32) -> RepairReport:
    """Check the local store in `path` and rebuild what is damaged: its vectors from the catalog, or its catalog
    from the vectors (a RepairReport says what was found and done; `.lost` if both were damaged). Works where
    open_store fails on a damaged catalog; the settings are open_store's (those the store was built with)."""
    from docqa.archive.repair import repair
    from docqa.settings import DEFAULT_EMBEDDING_MODEL, default_store_dir

    store_dir = Path(path).expanduser() if path is not None else default_store_dir()
    return repair(Settings(store_dir=store_dir, collection=collection, embedding_model=embedding_model or
                           DEFAULT_EMBEDDING_MODEL, embedding_backend=embedding_backend, chunk_tokens=chunk_tokens,
                           overlap_tokens=overlap_tokens, batch_size=batch_size))
