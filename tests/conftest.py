"""Shared test configuration: the project's own testing helpers are the users' ones."""

pytest_plugins = ["orchestration.testing"]
