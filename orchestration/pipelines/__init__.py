"""Declared pipelines: workflows loaded from JSON/YAML files (see docs/pipelines.md)."""
