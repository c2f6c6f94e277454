"""The process's default deployment (host), found without importing the composition root.

The ``Orchestrator`` (``orchestration.app``) implements ``define.workflow.Host`` and
installs a factory here (the shape of dramatiq's ``set_broker``/``get_broker``); the
default is built from it on first use. Typed loosely on purpose: naming ``Host`` here
would tie this registry to the workflow module that reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchestration.errors import ConfigurationError

_factory: Callable[[], Any] | None = None
_default: Any = None
_lock = threading.Lock()


def install_default(factory: Callable[[], Any]) -> None:
    """Name what builds the process's default host (the composition root calls this)."""
    global _factory
    _factory = factory


def set_default(host: Any) -> None:
    """Make ``host`` the process's default (None: build it again on next use)."""
    global _default
    with _lock:
        _default = host


def current_default() -> Any:
    """The default host if one was built, else None (never builds one)."""
    return _default


def default_host() -> Any:
    """The process's default host, built on first use by the installed factory."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                if _factory is None:
                    raise ConfigurationError(
                        "no default orchestrator: import orchestration (or pass app=)")
                _default = _factory()
    return _default
