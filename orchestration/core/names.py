"""What workflow, step, output and queue names may be; checked when a workflow is defined.

Each name ends up somewhere with rules of its own, and a name that breaks them used to
fail much later (at the first submit, or in a worker importing the module):

- a step's name becomes the name of a function Celery compiles for the task's
  signature, so a Python keyword (``class``) is a ``SyntaxError`` there;
- outputs are parameter names of later steps: identifiers, not keywords;
- ``<workflow>.<step>`` is the Celery task name; Celery's own tasks are ``celery.*`` and
  the engine's ``orchestration.*``, so a workflow of either name would replace them;
- ``celery worker -Q a,b`` splits queue names on commas and strips spaces, and
  RabbitMQ refuses to declare ``amq.*`` queues;
- the results database stores each name in 200 characters.
"""

from __future__ import annotations

import keyword
import re

from orchestration.errors import WorkflowDefinitionError

MAX_NAME = 200  # the results DB's column width for names
RESERVED_WORKFLOWS = frozenset({"celery", "orchestration"})
_WORKFLOW = re.compile(r"(?!-)[\w-]+")
_QUEUE_FORBIDDEN = re.compile(r"[\s,\x00-\x1f\x7f]")


def identifier(value: object, what: str, where: str) -> str:
    """A step, output or input name: a Python identifier that is not a keyword."""
    if not isinstance(value, str) or not value.isidentifier():
        raise WorkflowDefinitionError(f"{where}: {what} must be a Python identifier, "
                                      f"got {value!r}")
    if keyword.iskeyword(value):
        raise WorkflowDefinitionError(
            f"{where}: {what} {value!r} is a Python keyword; it cannot name a step, an output "
            "or a parameter (Celery compiles a function of that name)")
    _check_length(value, what, where)
    return value


def workflow_name(value: object) -> str:
    """A workflow name: letters, digits, ``_`` and ``-`` (not first), not reserved."""
    if not isinstance(value, str) or not _WORKFLOW.fullmatch(value):
        raise WorkflowDefinitionError(
            f"workflow name must be letters, digits, '_' or '-' (not starting with '-'), "
            f"got {value!r}")
    if value in RESERVED_WORKFLOWS:
        raise WorkflowDefinitionError(
            f"workflow name {value!r} is reserved: task names {value}.* belong to "
            f"{'Celery' if value == 'celery' else 'the engine'}")
    _check_length(value, "name", f"workflow {value[:40]!r}")
    return value


def queue_name(value: object, what: str, where: str) -> str:
    """A queue name (or a model name, which becomes ``model.<name>``)."""
    if not isinstance(value, str) or not value.strip():
        raise WorkflowDefinitionError(f"{where}: {what} must be a non-empty string, "
                                      f"got {value!r}")
    bad = _QUEUE_FORBIDDEN.search(value)
    if bad:
        raise WorkflowDefinitionError(
            f"{where}: {what} {value!r} contains {bad.group()!r}: queue names cannot hold "
            "spaces, commas or control characters (celery worker -Q could not name it)")
    if value.startswith("amq."):
        raise WorkflowDefinitionError(f"{where}: {what} {value!r}: names starting with "
                                      "'amq.' are reserved by RabbitMQ")
    _check_length(value, what, where)
    return value


def _check_length(value: str, what: str, where: str) -> None:
    if len(value) > MAX_NAME:
        raise WorkflowDefinitionError(f"{where}: {what} is {len(value)} characters long; "
                                      f"at most {MAX_NAME} fit the results database")
