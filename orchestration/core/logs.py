"""Structured logging: structlog to stderr, JSON lines in production, readable on a terminal."""

from __future__ import annotations

import json as json_module
import logging
import sys

import structlog

from orchestration.core.redaction import Redactor, structlog_processor


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


class CeleryLogFilter(logging.Filter):
    """Keeps Celery's own log lines free of run data.

    Celery logs a task's return value ("Task x succeeded in 0.01s: {...}"), which for a
    step is the run's envelope: inputs and outputs. It is replaced by a pointer to the
    results DB, and every message is scrubbed like the engine's own lines.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            args = dict(record.args)
            for key in ("return_value", "args", "kwargs"):
                if key in args:
                    args[key] = "<omitted: see the results DB>"
            record.args = args
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        record.msg, record.args = self._redactor.text(message) or "", None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, like the engine's structlog output."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(), "logger": record.name,
            "event": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json_module.dumps(line, default=str)


def configure_celery_logger(logger: logging.Logger, redactor: Redactor, *, json: bool) -> None:
    """Scrub (and, with ORCH_LOG_JSON, JSON-format) a logger set up by Celery."""
    for handler in logger.handlers:
        if not any(isinstance(f, CeleryLogFilter) for f in handler.filters):
            handler.addFilter(CeleryLogFilter(redactor))
        if json:
            handler.setFormatter(JsonFormatter())
