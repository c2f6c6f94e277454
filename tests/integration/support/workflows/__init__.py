"""Test workflows, one module per suite; workers import them by name through ``ORCH_IMPORTS``.

Importing a module registers its workflows on the default orchestrator, so this package
imports none of them: a worker knows exactly the modules its environment names.
"""
