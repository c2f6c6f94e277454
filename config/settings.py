"""Typed settings read from ``ORCH_*`` environment variables.

With nothing set, everything runs on the embedded default: an in-process broker and
worker, and a SQLite results database under ``./var/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "orchestration.inprocess:InProcessBackend"


class Settings(BaseSettings):
    """Everything a deployment configures, checked when loaded."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    broker_url: str = Field(
        default=EMBEDDED_BROKER,
        description="Celery broker. Unset: in-process broker (one process; demo and tests).",
    )
    result_backend: str | None = Field(
        default=None,
        description="Celery result backend (chord bookkeeping only). Unset: the broker's Redis, "
        "or in-process memory with the embedded broker.",
    )
    database_url: str = Field(
        default="sqlite:///var/orchestration.db",
        description="Results database (runs, steps, attempts). SQLite or PostgreSQL.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis for shared breaker state and rate limits."
    )
    models_file: Path | None = Field(default=None, description="Model catalogue (YAML).")
    imports: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "tasks.support.workflow",
            "tasks.support.routing",
            "tasks.fraud.workflow",
            "tasks.content.workflow",
        ],
        description="Workflow modules every worker imports, comma-separated.",
    )
    default_queue: str = Field(default="default", description="Queue of steps that name none.")
    inline_output_limit: int = Field(
        default=16_384,
        description="Outputs larger than this many bytes of JSON travel by reference "
        "(read from the results DB) instead of inside broker messages.",
    )
    inline_retry_limit: float = Field(
        default=2.0,
        description="Retry waits up to this many seconds sleep in the worker; longer waits "
        "hand the step back to the broker with a countdown and free the slot.",
    )
    embedded_concurrency: int = Field(default=8, description="Threads of the in-process worker.")
    visibility_timeout: int = Field(
        default=3600,
        description="Seconds before Redis re-delivers an unacknowledged message; must exceed "
        "the longest step (all attempts and backoff).",
    )

    max_crashes: int = Field(
        default=3, ge=1,
        description="A step whose worker died this many times is failed as a poison step.",
    )
    reconcile_after: float = Field(
        default=600.0, gt=0,
        description="Seconds without progress before the reconciler re-dispatches a run; "
        "must exceed the longest step.",
    )
    max_input_bytes: int = Field(
        default=1_000_000, gt=0, description="Largest accepted run input (bytes of JSON)."
    )
    redact_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More field names whose values are never stored or logged, comma-separated.",
    )
    metrics_port: int | None = Field(
        default=None, description="A worker serves its own Prometheus metrics on this port "
        "(threads pool; prefork workers use PROMETHEUS_MULTIPROC_DIR + orchestrate metrics).",
    )
    log_level: str = Field(default="INFO", description="Engine log level.")
    log_json: bool | None = Field(
        default=None, description="JSON log lines (default: unless stderr is a terminal)."
    )

    @field_validator("imports", "redact_fields", mode="before")
    @classmethod
    def _split_imports(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def embedded(self) -> bool:
        """True when the broker lives inside this process."""
        return self.broker_url.startswith("memory://")

    @property
    def shared_redis_url(self) -> str | None:
        """Redis for state every worker shares: ORCH_REDIS_URL, else a Redis broker."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def effective_result_backend(self) -> str:
        """The result backend to configure: explicit, else derived from the broker."""
        if self.result_backend:
            return self.result_backend
        if self.embedded:
            return EMBEDDED_BACKEND
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        raise ValueError(
            "ORCH_RESULT_BACKEND must be set when the broker is not Redis "
            "(chords need a result backend; use a redis:// URL)"
        )
