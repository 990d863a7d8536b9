"""The ingestion pipeline: files -> pages -> chunks -> embeddings -> archival memory."""

from docqa.ingest.pipeline import Ingestor, IngestReport, delete_paths

__all__ = ["IngestReport", "Ingestor", "delete_paths"]
