"""The deployment's settings: the engine's typed ``ORCH_*`` settings, re-exported.

The type lives in the engine (``orchestration.core.settings``); this name is kept so
that code importing ``config.settings`` keeps working.
"""

from orchestration.core.settings import EMBEDDED_BACKEND, EMBEDDED_BROKER, Settings

__all__ = ["EMBEDDED_BACKEND", "EMBEDDED_BROKER", "Settings"]
