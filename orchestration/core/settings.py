"""Typed settings read from ``ORCH_*`` environment variables.

With nothing set, everything runs on the embedded default: an in-process broker and
worker, and a SQLite results database under ``./var/``.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from celery.app.backends import BACKEND_ALIASES
from kombu.transport import TRANSPORT_ALIASES
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestration.core.durations import parse_duration

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "orchestration.worker.inprocess:InProcessBackend"


class Settings(BaseSettings):
    """Everything a deployment configures, checked when loaded."""

    # allow_inf_nan=False: a NaN or infinite number of seconds or bytes is never meant.
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore", allow_inf_nan=False)

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
    redis_timeout: float = Field(
        default=10.0, gt=0,
        description="Seconds a command to the shared Redis (breakers, limits, run streams, "
        "completion notices, permits) may take to connect or to be answered: past it the "
        "call fails and its caller goes on without it, so a hung Redis hangs nothing. "
        "Blocking stream reads wait at most half of it per round trip.",
    )
    models_file: Path | None = Field(default=None, description="Model catalogue (YAML).")
    deployment: str = Field(
        default="config",
        description="The deployment's configuration module: its WORKFLOW_MODULES, "
        "MODELS_FILE and PIPELINES are the defaults of ORCH_IMPORTS, ORCH_MODELS_FILE and "
        "ORCH_PIPELINES. Empty: none.",
    )
    imports: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Workflow modules every worker imports, comma-separated.",
    )
    pipelines: Path | None = Field(
        default=None,
        description="A folder of pipeline files (*.json, *.yaml) every worker and the CLI "
        "load as workflows. Unset: the deployment's PIPELINES, else none.",
    )
    default_queue: str = Field(default="default", description="Queue of steps that name none.")
    inline_output_limit: int = Field(
        default=16_384, ge=0,
        description="Outputs larger than this many bytes of JSON travel by reference "
        "(read from the results DB) instead of inside broker messages.",
    )
    inline_retry_limit: float = Field(
        default=2.0, ge=0,
        description="Retry waits up to this many seconds sleep in the worker; longer waits "
        "hand the step back to the broker with a countdown and free the slot.",
    )
    async_threads: int = Field(
        default=64, ge=1,
        description="Threads of each worker process's event loop executor: what an async def "
        "step hands to a thread runs there (a model call's wait under a shared rate limit, "
        "a provider with a caller's own HTTP client), at most this many at once per process.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The event loop async def steps run on: uvloop (in C; asyncio's own "
        "where uvloop has no build, e.g. Windows), or asyncio's pure-Python loop.",
    )
    pack_size: int = Field(
        default=16, ge=1,
        description="submit_many: runs whose whole run is one step message share a message, "
        "this many at most (each still runs, retries and records on its own). 1: a "
        "message per run.",
    )
    pack_concurrency: int = Field(
        default=4, ge=1,
        description="Runs of one shared message (see pack_size) a worker runs at once, a "
        "thread each. Their claims and records share transactions (group_commit); more "
        "only helps while the worker has CPU to spare (16 measured no faster than 4).",
    )
    group_commit: int = Field(
        default=32, ge=1,
        description="Claims and records that threads of one process make at the same time "
        "share a transaction and its commit, this many at most (if one fails, each runs "
        "again in its own: one's error is its own). 1: a transaction each.",
    )
    embedded_concurrency: int = Field(
        default=8, ge=1,
        description="Threads of each queue's pool in the in-process worker (every queue has "
        "its own, like one worker per queue in production).",
    )
    embedded_queue_concurrency: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Threads of some queues' pools in the in-process worker, e.g. "
        "'model.slow=4,model.fast=2' (others get ORCH_EMBEDDED_CONCURRENCY).",
    )
    reconcile_interval: float = Field(
        default=60.0, gt=0,
        description="Seconds between reconciler passes inside an embedded process (a worker "
        "deployment runs them with `celery beat`).",
    )
    visibility_timeout: int = Field(
        default=3600, gt=0,
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
    permit_lease: float = Field(
        default=30.0, gt=0,
        description="Seconds a max_parallel permit outlives its holder's last renewal: a "
        "worker killed while holding permits frees them within this time.",
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0,
        description="Seconds between a worker's heartbeats in the results DB (each beat also "
        "sweeps steps held by workers that stopped beating).",
    )
    worker_dead_after: float = Field(
        default=20.0, gt=0,
        description="A worker whose last heartbeat is older than this many seconds is dead: "
        "the steps it held are re-dispatched (and count as a crash of each step).",
    )
    version_grace: float = Field(
        default=3600.0, gt=0,
        description="Seconds a step message of a run waits for a live worker carrying its "
        "workflow version (parked in the results DB, shown by `orchestrate show`) before "
        "the run is failed saying so (docs/upgrades.md).",
    )
    db_outage_hold: float = Field(
        default=60.0, ge=0,
        description="Seconds a worker keeps retrying to record a finished step while the "
        "results DB is unreachable, before handing the step back to the broker (which runs "
        "it again once the DB answers).",
    )
    max_input_bytes: int = Field(
        default=1_000_000, gt=0, description="Largest accepted run input (bytes of JSON)."
    )
    retention: Annotated[float | None, NoDecode] = Field(
        default=None,
        description="How long finished runs are kept (30d, 12h, 90m, seconds; off: forever, "
        "the default). The reconciler's passes and `orchestrate db prune` delete runs that "
        "ended longer ago, with everything recorded about them; a workflow's own "
        "retention= overrides it.",
    )
    redact_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More field names whose values are never stored or logged, comma-separated.",
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="A worker serves its own Prometheus metrics on this port "
        "(threads pool; prefork workers use PROMETHEUS_MULTIPROC_DIR + orchestrate metrics).",
    )
    serve_token: SecretStr | None = Field(
        default=None,
        description="`orchestrate serve`: the bearer token a webhook sender presents "
        "(Authorization: Bearer <token>). Never logged.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="`orchestrate serve`: the shared secret of HMAC-SHA256 webhook "
        "signatures (X-Orchestrate-Signature or X-Hub-Signature-256: sha256=<hex>).",
    )
    webhook_max_bytes: int = Field(
        default=1_048_576, gt=0,
        description="`orchestrate serve`: largest accepted webhook body (bytes); 413 beyond.",
    )
    stream: bool = Field(
        default=True,
        description="Write each run's live event stream (handle.stream(): step events, "
        "partial outputs, LLM tokens). ORCH_STREAM=off writes none.",
    )
    stream_maxlen: int = Field(
        default=10_000, ge=1,
        description="Events kept per run stream (approximately; the oldest go first).",
    )
    stream_ttl: float = Field(
        default=7 * 24 * 3600.0, gt=0,
        description="Seconds a run's stream is kept after its last event.",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry: export traces over OTLP/HTTP to this base URL "
        "(spans go to <url>/v1/traces). Unset: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else "
        "tracing is off (no SDK set up).",
    )
    otel_file: Path | None = Field(
        default=None,
        description="OpenTelemetry: also write finished spans as JSON lines to this file "
        "(debugging, tests); turns tracing on by itself.",
    )
    otel_service_name: str = Field(
        default="orchestration",
        description="OpenTelemetry service.name of the spans (OTEL_SERVICE_NAME wins).",
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

    @field_validator("serve_token", "webhook_secret")
    @classmethod
    def _no_empty_credential(cls, value: SecretStr | None,
                             info: ValidationInfo) -> SecretStr | None:
        # An empty credential set by mistake must not read as "no authentication".
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(f"ORCH_{str(info.field_name).upper()} is set but empty: give "
                             "a credential, or unset it")
        return value

    @field_validator("embedded_queue_concurrency", mode="before")
    @classmethod
    def _queue_threads(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        threads: dict[str, object] = {}
        for part in (part.strip() for part in value.split(",")):
            queue, sep, count = (item.strip() for item in part.partition("="))
            if part and (not sep or not queue or not count):
                raise ValueError(f"ORCH_EMBEDDED_QUEUE_CONCURRENCY: {part!r} is not "
                                 "queue=threads (e.g. 'model.slow=4,model.fast=2')")
            if part:
                threads[queue] = count
        return threads

    @field_validator("embedded_queue_concurrency")
    @classmethod
    def _positive_threads(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(queue for queue, count in value.items() if count < 1)
        if bad:
            raise ValueError(f"ORCH_EMBEDDED_QUEUE_CONCURRENCY: queue(s) {', '.join(bad)} "
                             "need at least 1 thread")
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        # Celery takes several broker URLs separated by ';' (failover).
        for url in value.split(";"):
            scheme = _scheme(url)
            if scheme not in TRANSPORT_ALIASES:
                raise ValueError(f"ORCH_BROKER_URL {url.strip()!r}: unknown transport "
                                 f"{scheme!r} (use redis://, rediss://, amqp:// or memory://)")
        return value

    @field_validator("result_backend")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        # 'module:Class' (no scheme) names a backend class, like the embedded one.
        if value and "://" in value and _scheme(value) not in BACKEND_ALIASES:
            raise ValueError(f"ORCH_RESULT_BACKEND {value!r}: unknown result backend "
                             f"{_scheme(value)!r} (use redis:// or rediss://)")
        return value

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: object) -> float | None:
        try:
            return parse_duration(value, "ORCH_RETENTION")
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and _scheme(value) not in ("redis", "rediss", "unix"):
            raise ValueError(f"ORCH_REDIS_URL {value!r} must be a redis://, rediss:// or "
                             "unix:// URL")
        return value

    @field_validator("default_queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        # The rule of orchestration/core/names.py: `celery worker -Q` splits on commas and
        # strips spaces, and RabbitMQ refuses amq.* queues.
        if not value or _QUEUE_FORBIDDEN.search(value) or value.startswith("amq."):
            raise ValueError(f"ORCH_DEFAULT_QUEUE {value!r}: a queue name is non-empty, has no "
                             "spaces, commas or control characters, and does not start "
                             "with 'amq.'")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"ORCH_LOG_LEVEL {value!r}: use DEBUG, INFO, WARNING, ERROR or "
                             "CRITICAL")
        return value.upper()

    @model_validator(mode="after")
    def _deployment_defaults(self) -> Settings:
        # The engine names no business module: the deployment's list and catalogue are
        # read from its configuration module, unless given explicitly.
        if not self.deployment or {"imports", "models_file",
                                   "pipelines"} <= self.model_fields_set:
            return self
        try:
            module = importlib.import_module(self.deployment)
        except ImportError as exc:
            raise ValueError(f"ORCH_DEPLOYMENT {self.deployment!r} cannot be imported: "
                             f"{exc}") from None
        if "imports" not in self.model_fields_set:
            self.imports = list(getattr(module, "WORKFLOW_MODULES", []))
        if "models_file" not in self.model_fields_set and self.models_file is None:
            models = getattr(module, "MODELS_FILE", None)
            self.models_file = Path(models) if models is not None else None
        if "pipelines" not in self.model_fields_set and self.pipelines is None:
            folder = getattr(module, "PIPELINES", None)
            self.pipelines = Path(folder) if folder is not None else None
        return self

    @model_validator(mode="after")
    def _liveness(self) -> Settings:
        if self.worker_dead_after < 2 * self.heartbeat_interval:
            raise ValueError(
                f"ORCH_WORKER_DEAD_AFTER ({self.worker_dead_after:g} s) must be at least twice "
                f"ORCH_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g} s): one late beat must "
                "not make a live worker look dead")
        return self

    @model_validator(mode="after")
    def _backend_for_broker(self) -> Settings:
        # Checked at load, not when the Celery app is first configured.
        self.effective_result_backend  # noqa: B018 (raises when there is none)
        return self

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


_QUEUE_FORBIDDEN = re.compile(r"[\s,\x00-\x1f\x7f]")


def _scheme(url: str) -> str:
    """The transport of a URL: ``redis`` for ``redis://``, ``sqla`` for ``sqla+postgresql://``."""
    head, sep, _ = url.strip().partition("://")
    return head.partition("+")[0].lower() if sep else ""
