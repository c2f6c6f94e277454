"""``orchestrate serve``: the HTTP entry point (event webhooks; the dashboard)."""
