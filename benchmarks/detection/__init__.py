"""Detection on ingest (issue 14), measured through the real service: see __main__.py."""
