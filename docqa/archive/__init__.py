"""Archival memory: Chroma for vectors, a catalog for truth and words, and the search over both.

store.py (ArchivalStore) is the entry; records.py holds what it hands out. Nothing is imported here, so
that importing one module of the package costs only that module."""
