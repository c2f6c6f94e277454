"""The demo's model catalogue: the shipped one (``config/models.yaml``), with the support
reply's models served by the demo's simulated provider (:mod:`tasks.demo.faults`).

- ``gpt-4o-mini`` (the reply's model): an adaptive timeout (2 x its recent p99, between
  0.5 s and 2 s), 2 retries per call, a breaker that opens after 5 consecutive provider
  failures and probes again after 0.5 s; falls back to ``claude-4-haiku``.
- ``claude-4-haiku``: a 2 s timeout, 1 retry per call, no further fallback model: when it
  fails too, the step's own retries and then its ``fallback=`` answer.

Prices are the shipped catalogue's, so the cost per run is what these calls would cost.
The breaker's reset timeout is short (0.5 s, against 30 s by default) so the whole
open -> half-open -> closed cycle fits in a batch of a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import config

PROVIDER = "demo"
PRIMARY = "gpt-4o-mini"
FALLBACK = "claude-4-haiku"

DEMO_MODELS: dict[str, dict[str, Any]] = {
    PRIMARY: {
        "provider": PROVIDER,
        "fallbacks": [FALLBACK],
        "timeout": {"factor": 2.0, "floor": 0.5, "ceiling": 2.0},  # adaptive
        "retries": 2,
        "breaker": {"fail_max": 5, "reset_timeout": 0.5},
    },
    FALLBACK: {
        "provider": PROVIDER,
        "fallbacks": [],
        "timeout": 2.0,
        "retries": 1,
        "breaker": {"fail_max": 5, "reset_timeout": 2.0},
    },
}


def demo_catalogue(base_url: str, shipped: Path = config.MODELS_FILE) -> dict[str, Any]:
    """The shipped catalogue with :data:`DEMO_MODELS` served from ``base_url`` (``.../v1``)."""
    catalogue: dict[str, Any] = yaml.safe_load(shipped.read_text())
    catalogue["providers"][PROVIDER] = {"kind": "openai", "base_url": base_url}
    for name, overrides in DEMO_MODELS.items():
        catalogue["models"][name] = {**catalogue["models"].get(name, {}), **overrides}
    return catalogue


def write_catalogue(base_url: str, path: Path) -> Path:
    """Write the demo catalogue for ``base_url`` to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by tasks/demo for one run of the demo: models served by its "
                    "simulated provider.\n" + yaml.safe_dump(demo_catalogue(base_url),
                                                              sort_keys=False))
    return path
