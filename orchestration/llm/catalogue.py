"""The model catalogue (YAML): providers, models, prices, fallbacks and routes, checked on load."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestration.define.adaptive import AdaptiveTimeout, adaptive
from orchestration.errors import ConfigurationError
from orchestration.llm.breakers import BreakerPolicy
from orchestration.llm.ratelimit import RateLimit
from orchestration.llm.tokens import Estimate

#: With no catalogue file: the local provider only (a deployment names its own file).
BUILTIN_CATALOGUE = {"providers": {"local": {"kind": "local"}},
                     "models": {"local": {"provider": "local", "tokens": "words*1.3"}},
                     "default_model": "local"}


class RateLimitConfig(BaseModel):
    """Requests and/or tokens per window (seconds), shared by every worker."""

    model_config = ConfigDict(extra="forbid")

    requests: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    window: float = Field(default=60.0, gt=0)

    def policy(self) -> RateLimit:
        """As the rate limiter's policy object."""
        return RateLimit(self.requests, self.tokens, self.window)


class BreakerConfig(BaseModel):
    """Open after ``fail_max`` consecutive provider failures, for ``reset_timeout`` seconds."""

    model_config = ConfigDict(extra="forbid")

    fail_max: int = Field(default=5, gt=0)
    reset_timeout: float = Field(default=30.0, gt=0)
    # How long a process reuses a healthy reading of the shared state (0: read every call).
    refresh: float = Field(default=0.1, ge=0, le=10)

    def policy(self) -> BreakerPolicy:
        """As the breaker's policy object."""
        return BreakerPolicy(self.fail_max, self.reset_timeout, self.refresh)


class AdaptiveConfig(BaseModel):
    """A model's call timeout from its recent p99 latency (see orchestration.define.adaptive)."""

    model_config = ConfigDict(extra="forbid")

    factor: float = Field(default=1.5, gt=0)
    floor: float = Field(default=1.0, gt=0)
    ceiling: float = Field(default=120.0, gt=0)


class ProviderConfig(BaseModel):
    """How to reach one provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai", "anthropic", "local"]
    base_url: str | None = None
    api_key_env: str | None = None
    rate_limit: RateLimitConfig | None = None
    # Awaited calls (ctx.llm.acomplete) in flight at once per worker process (one
    # connection each); the next waits for a free connection.
    max_connections: int = Field(default=256, ge=1)

    @property
    def configured(self) -> bool:
        """True when calls can go out (local always; HTTP providers need their key set)."""
        if self.kind == "local":
            return True
        return bool(self.base_url) and (self.api_key_env is None
                                        or bool(os.environ.get(self.api_key_env)))


class ModelConfig(BaseModel):
    """One model: its provider, prices in USD per 1k tokens, fallbacks in order.

    ``context_window``: the most tokens a prompt may hold; ``tokens``: how its tokens
    are estimated offline (see :mod:`orchestration.llm.tokens`).
    """

    model_config = ConfigDict(extra="allow")

    provider: str
    input_cost_per_1k: float = Field(default=0.0, ge=0)
    output_cost_per_1k: float = Field(default=0.0, ge=0)
    fallbacks: list[str] = []
    timeout: float | AdaptiveConfig = 60.0
    retries: int = Field(default=2, ge=0)
    breaker: BreakerConfig = BreakerConfig()
    rate_limit: RateLimitConfig | None = None
    queue: str | None = None
    context_window: int = Field(default=8192, gt=0)
    tokens: Estimate = "chars/4"

    def timeout_policy(self) -> float | AdaptiveTimeout:
        """Seconds per call, or the adaptive policy that computes them."""
        if isinstance(self.timeout, AdaptiveConfig):
            return adaptive(self.timeout.factor, self.timeout.floor, self.timeout.ceiling)
        return self.timeout

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a call with these token counts."""
        return (prompt_tokens * self.input_cost_per_1k
                + completion_tokens * self.output_cost_per_1k) / 1000


Escalation = Literal["gate_failed", "invalid_output", "low_confidence"]
_ROUTE_NAME = re.compile(r"[^\s,\x00-\x1f\x7f]{1,200}")  # a name `celery -Q model.<name>` takes


class RouteConfig(BaseModel):
    """A cost-aware route: models tried cheapest first, the next one when an answer fails.

    A step with ``model="<route>"`` runs on ``tiers[0]``; an attempt that fails for a
    reason in ``escalate_on`` runs again at once on the next tier (see
    :mod:`orchestration.execute.routes`). ``min_confidence``: the confidence (0..1) a step
    reports below which ``low_confidence`` escalates.
    """

    model_config = ConfigDict(extra="forbid")

    tiers: list[str] = Field(min_length=1)
    escalate_on: list[Escalation] = ["gate_failed", "invalid_output", "low_confidence"]
    min_confidence: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _check_confidence(self) -> RouteConfig:
        if "low_confidence" in self.escalate_on and self.min_confidence is None:
            raise ValueError("escalate_on names low_confidence but min_confidence is not set "
                             "(a number in 0..1)")
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers name a model twice: {self.tiers}")
        return self


class Catalogue(BaseModel):
    """Providers, models and routes; unknown names and fallback cycles are rejected on load."""

    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    routes: dict[str, RouteConfig] = {}
    default_model: str | None = None

    @model_validator(mode="after")
    def _check_references(self) -> Catalogue:
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise ValueError(f"model {name!r} names unknown provider {model.provider!r}")
            for fallback in model.fallbacks:
                if fallback not in self.models:
                    raise ValueError(f"model {name!r} falls back to unknown model {fallback!r}")
        if self.default_model and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not a model")
        for name in self.models:
            self._check_cycle(name)
        for name, route in self.routes.items():
            self._check_route(name, route)
        return self

    def _check_route(self, name: str, route: RouteConfig) -> None:
        if not _ROUTE_NAME.fullmatch(name) or name.startswith("amq."):
            raise ValueError(f"route {name!r}: not a usable queue name (model.{name}): no "
                             "spaces, commas or control characters, at most 200 characters")
        if name in self.models:
            raise ValueError(f"route {name!r} has the name of a model: a step's model= "
                             "would be ambiguous")
        previous: tuple[str, float] | None = None
        for tier in route.tiers:
            if tier in self.routes:
                raise ValueError(f"route {name!r}: tier {tier!r} is a route; tiers are models")
            if tier not in self.models:
                raise ValueError(f"route {name!r}: tier {tier!r} is not a model "
                                 f"(known: {', '.join(sorted(self.models))})")
            price = self.models[tier].input_cost_per_1k + self.models[tier].output_cost_per_1k
            if previous is not None and price < previous[1]:
                raise ValueError(
                    f"route {name!r}: tier {tier!r} (${price:g} per 1k in+out) is cheaper than "
                    f"{previous[0]!r} before it (${previous[1]:g}); tiers go cheapest first")
            previous = (tier, price)

    def route(self, name: str | None) -> RouteConfig | None:
        """The route called ``name``, or None when it is a model (or None)."""
        return self.routes.get(name) if name is not None else None

    def _check_cycle(self, start: str) -> None:
        path: list[str] = []

        def visit(name: str) -> None:
            if name in path:
                raise ValueError(f"fallback cycle: {' -> '.join([*path, name])}")
            path.append(name)
            for fallback in self.models[name].fallbacks:
                visit(fallback)
            path.pop()

        visit(start)

    def fallback_chain(self, name: str) -> list[str]:
        """``name`` then its fallbacks, depth first, each model once."""
        chain: list[str] = []

        def visit(model: str) -> None:
            if model not in chain:
                chain.append(model)
                for fallback in self.model(model).fallbacks:
                    visit(fallback)

        visit(name)
        return chain

    def model(self, name: str) -> ModelConfig:
        """A model's configuration; unknown names raise ConfigurationError."""
        try:
            return self.models[name]
        except KeyError:
            if name in self.routes:
                raise ConfigurationError(
                    f"{name!r} is a route, not a model: name it as a step's model= (the step "
                    f"escalates along its tiers {self.routes[name].tiers}), or call one of "
                    "those models") from None
            raise ConfigurationError(f"model {name!r} is not in the catalogue "
                                     f"(known: {', '.join(sorted(self.models))})") from None


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read and check a catalogue file (None: the built-in local-only catalogue)."""
    if path is None:
        return Catalogue.model_validate(BUILTIN_CATALOGUE)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read model catalogue {path}: {exc}") from exc
    try:
        return Catalogue.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigurationError(f"invalid model catalogue {path}: {exc}") from exc
