"""Execute: one delivery of one step under its policies (no Celery imports)."""
