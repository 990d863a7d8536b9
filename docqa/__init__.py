"""docqa: ask questions about documents far larger than an LLM's context window (MemGPT-style).

The Python API (see docqa.api): `open_store(path)` gives a `Store` with `ingest`, `search`, `delete`,
`documents` and `ask` (`repair_store(path)` rebuilds a damaged one); the types they return are exported
here too. Importing docqa loads nothing heavy and changes nothing in the process; the first call that
needs a model or Chroma loads it.
"""

from docqa.agent.result import AgentResult
from docqa.api import Store, open_store, repair_store
from docqa.archive.records import ChunkRecord, DocumentRow, SearchHit, SearchPage, StoreError
from docqa.errors import DocqaError
from docqa.ingest.report import FileFailure, IngestReport

__version__ = "0.1.0"
__all__ = ["AgentResult", "ChunkRecord", "DocqaError", "DocumentRow", "FileFailure", "IngestReport", "SearchHit",
           "SearchPage", "Store", "StoreError", "__version__", "open_store", "repair_store"]
