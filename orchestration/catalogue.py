"""The model catalogue (YAML): providers, models, prices and fallbacks, checked on load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from orchestration.errors import ConfigurationError

DEFAULT_CATALOGUE = Path(__file__).resolve().parent.parent / "config" / "models.yaml"


class ProviderConfig(BaseModel):
    """How to reach one provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai", "local"]
    base_url: str | None = None
    api_key_env: str | None = None

    @property
    def configured(self) -> bool:
        """True when calls can go out (local always; HTTP providers need their key set)."""
        if self.kind == "local":
            return True
        return bool(self.base_url) and (self.api_key_env is None
                                        or bool(os.environ.get(self.api_key_env)))


class ModelConfig(BaseModel):
    """One model: its provider, prices in USD per 1k tokens, fallbacks in order."""

    model_config = ConfigDict(extra="allow")

    provider: str
    input_cost_per_1k: float = 0.0
    output_cost_per_1k: float = 0.0
    fallbacks: list[str] = []

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a call with these token counts."""
        return (prompt_tokens * self.input_cost_per_1k
                + completion_tokens * self.output_cost_per_1k) / 1000


class Catalogue(BaseModel):
    """Providers and models; unknown names and fallback cycles are rejected on load."""

    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
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
        return self

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

    def model(self, name: str) -> ModelConfig:
        """A model's configuration; unknown names raise ConfigurationError."""
        try:
            return self.models[name]
        except KeyError:
            raise ConfigurationError(f"model {name!r} is not in the catalogue "
                                     f"(known: {', '.join(sorted(self.models))})") from None


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read and check a catalogue file (default: the packaged ``config/models.yaml``)."""
    path = path or DEFAULT_CATALOGUE
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read model catalogue {path}: {exc}") from exc
    try:
        return Catalogue.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigurationError(f"invalid model catalogue {path}: {exc}") from exc
