"""Archival memory: Chroma for vectors, a catalog for truth and words, and the search over both."""

from docqa.archive.store import ArchivalStore, SearchHit, SearchPage, StoreError

__all__ = ["ArchivalStore", "SearchHit", "SearchPage", "StoreError"]
