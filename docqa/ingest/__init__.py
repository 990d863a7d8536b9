"""The ingestion pipeline: files -> pages -> chunks -> embeddings -> archival memory (pipeline.py: Ingestor).
Nothing is imported here, so that the report type (report.py) costs nothing to import."""
