"""A workflow's declared version label (``Workflow(..., version="2")``)."""

from __future__ import annotations

import re

from orchestration.errors import WorkflowDefinitionError

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]{0,19}")


def version_label(workflow: str, value: object) -> str | None:
    """The checked label (letters, digits, '.', '_'; up to 20), or None when not declared."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: version must be a short label such as '2' or "
            f"'2024.06' (letters, digits, '.' and '_', up to 20 characters), got {value!r}")
    return value
