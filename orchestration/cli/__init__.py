"""``orchestrate``: inspect and operate runs, workflows, pipelines and events.

``main`` is the command group (``orchestration.cli.main``); each command family lives in
its own module and is added to the group there.
"""

from orchestration.cli.main import main

__all__ = ["main"]
