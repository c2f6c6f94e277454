"""Integration tests: real Redis, real PostgreSQL, real Celery worker processes."""
