"""docqa: ask questions about documents far larger than an LLM's context window (MemGPT-style).

The Python API (see docqa.api): `open_store(path)` gives a `Store` with `ingest`, `search`, `delete`,
`documents` and `ask`. Importing docqa loads nothing heavy; the first call does.
"""

from docqa.api import Store, open_store

__version__ = "0.1.0"
__all__ = ["Store", "__version__", "open_store"]
