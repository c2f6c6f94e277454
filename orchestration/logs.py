"""Structured logging: structlog to stderr, JSON lines in production, readable on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from orchestration.redaction import Redactor, structlog_processor


def configure_logging(level: str = "INFO", *, json: bool | None = None,
                      redactor: Redactor | None = None) -> None:
    """Configure structlog for this process (``ORCH_LOG_LEVEL``, ``ORCH_LOG_JSON``).

    ``json=None`` picks JSON unless stderr is a terminal. Every line carries the
    context bound for the current step (run_id, step, attempt, queue, model) and is
    redacted.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog_processor(redactor or Redactor()),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
