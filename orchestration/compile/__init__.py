"""Compile: a workflow's plan becomes Celery canvas (chains, groups, chords; fused steps)."""
