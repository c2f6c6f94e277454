"""A run's inputs: the declared names of a workflow, and the checks at submission.

Nothing is written or enqueued before these pass; each error names the workflow and the
input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestration.core.envelope import check_json, dumps
from orchestration.core.names import identifier
from orchestration.define.step import CTX_PARAM
from orchestration.errors import InvalidInput, WorkflowDefinitionError

RESERVED_INPUTS = frozenset({"idempotency_key", CTX_PARAM})


def declared_inputs(name: str, inputs: object) -> frozenset[str] | None:
    """The names a workflow declares with ``inputs=`` (None: not declared)."""
    if inputs is None:
        return None
    # A bare string would be taken letter by letter: inputs="text" declares t, e, x.
    if isinstance(inputs, str) or not isinstance(inputs, list | tuple | set | frozenset):
        raise WorkflowDefinitionError(f"workflow {name!r}: inputs must be a list of names, "
                                      f"got {inputs!r}")
    return frozenset(identifier(item, "input name", f"workflow {name!r}") for item in inputs)


def check_run_inputs(workflow: str, inputs: Mapping[Any, Any], *, required: frozenset[str],
                     declared: frozenset[str] | None, limit: int) -> None:
    """Required present, only declared ones, names strings, values JSON within ``limit``."""
    for key in inputs:
        if not isinstance(key, str):
            raise InvalidInput(f"workflow {workflow!r}: input names are strings, "
                               f"got {key!r}")
    reserved = sorted(set(inputs) & RESERVED_INPUTS)
    if reserved:
        raise InvalidInput(f"workflow {workflow!r}: {reserved[0]!r} is reserved, not an "
                           "input (idempotency_key is an argument of submit())")
    missing = sorted(required - set(inputs))
    if missing:
        raise InvalidInput(f"workflow {workflow!r}: missing input(s) {', '.join(missing)}")
    if declared is not None:
        unknown = sorted(set(inputs) - declared)
        if unknown:
            raise InvalidInput(f"workflow {workflow!r}: unknown input(s) {', '.join(unknown)}"
                               f" (declared: {', '.join(sorted(declared))})")
    for key, value in inputs.items():
        try:
            check_json(value)
            size = len(dumps(value).encode())
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"workflow {workflow!r}: input {key!r} is not JSON-serialisable "
                f"({type(value).__name__}): {exc}"
            ) from None
        if size > limit:
            raise InvalidInput(f"workflow {workflow!r}: input {key!r} is {size} bytes of "
                               f"JSON, over the limit of {limit} (ORCH_MAX_INPUT_BYTES)")
