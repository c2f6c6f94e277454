"""Core: the vocabulary every floor shares (status, envelope, records, clock, settings, ...)."""
