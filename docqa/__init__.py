"""docqa: ask questions about documents far larger than an LLM's context window (MemGPT-style)."""

__version__ = "0.1.0"
