"""Benchmarks: the engine against raw Celery, measured in the same run (see overhead.py)."""
