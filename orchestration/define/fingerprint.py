"""Fingerprints of step code: what makes a workflow version and a result-cache key."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestration.core.envelope import dumps

if TYPE_CHECKING:
    from orchestration.define.step import StepSpec


def code_hash(fn: Callable[..., Any]) -> str:
    """A short hash of a function's code that is the same in every process."""
    code = getattr(fn, "__code__", None)
    return hashlib.sha256(_code_fingerprint(code).encode()).hexdigest()[:12] if code else ""


def stable(policy: object, *, code: bool = True) -> str:
    """A description of a policy that is the same in every process (no addresses).

    ``code=False``: a callable policy by name only, not by its code.
    """
    if policy is None:
        return ""
    target = getattr(policy, "_target", None) or getattr(policy, "compute", None)
    if callable(target):
        described = f"{type(policy).__name__}:{getattr(target, '__qualname__', '')}"
        return f"{described}:{code_hash(target)}" if code else described
    return repr(policy)


def cache_key(spec: StepSpec, kwargs: dict[str, Any]) -> str:
    """The result-cache key of a step call: workflow, step, its code, and its arguments."""
    material = dumps([spec.workflow, spec.name, code_hash(spec.fn), kwargs])
    return hashlib.sha256(material.encode()).hexdigest()


def _code_fingerprint(code: Any) -> str:
    # Bytecode alone misses changed constants and called names (x + 1 vs helper(x) + 2).
    consts = [_code_fingerprint(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return repr((code.co_code, consts, code.co_names))
