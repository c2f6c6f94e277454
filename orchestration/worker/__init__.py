"""Worker: the engine on Celery (step and engine tasks, signals, transports, heartbeat)."""
