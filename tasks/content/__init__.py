"""Content summaries: an LLM summary behind quality gates, with an extractive fallback."""
