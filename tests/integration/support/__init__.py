"""What the integration tests share: test workflows, helpers, the CLI and observability tools.

``workflows/`` holds the modules that workers import by name (``ORCH_IMPORTS``); each one
registers its workflows on the default orchestrator when imported, so none is imported here.
"""
