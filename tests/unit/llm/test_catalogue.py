"""The model catalogue (loading and checks) and ``ctx.llm`` answering from it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from config import MODELS_FILE as DEFAULT_CATALOGUE
from orchestration import ConfigurationError, RunStatus, StepContext, Workflow
from orchestration.app import Orchestrator
from orchestration.llm.catalogue import ModelConfig, load_catalogue
from orchestration.llm.providers.local import LABEL
from orchestration.testing import embedded_orchestrator

VALID = """
providers:
  house: {kind: local}
  remote: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: TEST_REMOTE_KEY}
models:
  big: {provider: remote, input_cost_per_1k: 1.0, fallbacks: [small]}
  small: {provider: house, input_cost_per_1k: 2.0, output_cost_per_1k: 4.0}
default_model: small
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_packaged_default_loads() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    assert DEFAULT_CATALOGUE.name == "models.yaml"
    assert catalogue.default_model == "gpt-4o-mini"
    assert catalogue.model("gpt-4o-mini").fallbacks == ["local-small"]
    assert catalogue.providers["local"].kind == "local"


def test_custom_catalogue_loads(tmp_path: Path) -> None:
    catalogue = load_catalogue(write(tmp_path, VALID))
    assert sorted(catalogue.models) == ["big", "small"]
    assert catalogue.model("small").cost(1000, 500) == pytest.approx(2.0 + 2.0)


@pytest.mark.parametrize(("text", "message"), [
    (VALID.replace("provider: house", "provider: nowhere"),
     "model 'small' names unknown provider 'nowhere'"),
    (VALID.replace("fallbacks: [small]", "fallbacks: [tiny]"),
     "model 'big' falls back to unknown model 'tiny'"),
    (VALID.replace("output_cost_per_1k: 4.0}", "output_cost_per_1k: 4.0, fallbacks: [big]}"),
     r"fallback cycle: (big -> small -> big|small -> big -> small)"),
    (VALID.replace("default_model: small", "default_model: huge"),
     "default_model 'huge' is not a model"),
    (VALID.replace("kind: local", "kind: carrier-pigeon"), "kind"),
    (VALID + "retries: 3\n", "retries"),
    ("providers: [unclosed\n", "cannot read model catalogue"),
])
def test_invalid_catalogues_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=message) as info:
        load_catalogue(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read model catalogue"):
        load_catalogue(tmp_path / "absent.yaml")


def test_unknown_model_lists_the_known_ones() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    known = ", ".join(sorted(catalogue.models))
    assert "gpt-4o-mini, " in known and known.endswith("local-small")
    with pytest.raises(ConfigurationError,
                       match=re.escape(f"'gpt-9' is not in the catalogue (known: {known})")):
        catalogue.model("gpt-9")


def test_provider_is_configured_only_with_its_key(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    catalogue = load_catalogue(write(tmp_path, VALID))
    remote = catalogue.providers["remote"]
    monkeypatch.delenv("TEST_REMOTE_KEY", raising=False)
    assert not remote.configured and catalogue.providers["house"].configured
    monkeypatch.setenv("TEST_REMOTE_KEY", "sk-test")
    assert remote.configured


def test_model_cost() -> None:
    model = ModelConfig(provider="p", input_cost_per_1k=0.15, output_cost_per_1k=0.6)
    assert model.cost(2000, 1000) == pytest.approx(0.9)
    assert ModelConfig(provider="p").cost(10_000, 10_000) == 0.0


# -- ctx.llm in a running step ---------------------------------------------------------


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("llm")) as orch:
        yield SimpleNamespace(default=_default_model(orch), named=_named_model(orch))


def _completion(answer: Any) -> dict[str, Any]:
    return {"text": answer.text, "model": answer.model, "provider": answer.provider,
            "cost": answer.cost_usd, "local": answer.local_fallback,
            "tokens": [answer.usage.prompt_tokens, answer.usage.completion_tokens]}


def _default_model(app: Orchestrator) -> Workflow:
    wf = Workflow("llm_default", app=app)

    @wf.task(model="gpt-4o-mini")
    def draft(text: str, ctx: StepContext) -> dict[str, Any]:
        return _completion(ctx.llm.complete(f"Write a first response: {text}"))

    return wf


def _named_model(app: Orchestrator) -> Workflow:
    wf = Workflow("llm_named", app=app)

    @wf.task
    def summarise(text: str, ctx: StepContext) -> dict[str, Any]:
        first = ctx.llm.complete(f"Summarise: {text}", model="small")
        second = ctx.llm.complete([{"role": "user", "content": "Again, shorter"}])
        return {"first": _completion(first), "second": _completion(second)}

    return wf


def test_unconfigured_provider_falls_back_to_the_local_model(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    # The packaged catalogue: gpt-4o-mini (OpenAI, no key here) falls back to local-small.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = flows.default.run(text="Can't login since update v3.2", timeout=10)
    answer = result.outputs["draft"]
    assert result.status is RunStatus.SUCCEEDED
    assert answer["text"].startswith(LABEL) and "v3.2" in answer["text"]
    assert (answer["model"], answer["provider"], answer["local"], answer["cost"]) == (
        "local-small", "local", True, 0.0)
    step = result.steps["draft"]
    assert (step.model, step.cost_usd, step.queue) == ("local-small", 0.0, "model.gpt-4o-mini")
    assert result.cost_usd == 0.0


def test_chain_with_no_configured_provider_is_answered_locally_and_labelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_REMOTE_KEY", raising=False)
    only_remote = write(tmp_path, """
providers:
  remote: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: TEST_REMOTE_KEY}
models:
  big: {provider: remote}
default_model: big
""")
    with embedded_orchestrator(tmp_path, models_file=only_remote) as orch:
        wf = Workflow("llm_unconfigured", app=orch)

        @wf.task
        def draft(text: str, ctx: StepContext) -> dict[str, Any]:
            return _completion(ctx.llm.complete(f"Write a first response: {text}"))

        result = wf.run(text="hello", timeout=10)
    answer = result.outputs["draft"]
    assert answer["text"].startswith(LABEL)
    assert (answer["model"], answer["local"], answer["cost"]) == (
        "local (big not configured)", True, 0.0)


@pytest.fixture(scope="module")
def priced_flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("priced")
    with embedded_orchestrator(directory, models_file=write(directory, VALID)) as orch:
        yield SimpleNamespace(named=_named_model(orch))


def test_priced_model_records_cost_on_step_and_run(priced_flows: SimpleNamespace) -> None:
    result = priced_flows.named.run(text="a long thread about invoices", timeout=10)
    first, second = result.outputs["summarise"]["first"], result.outputs["summarise"]["second"]
    # "house" is a local provider: its answers are labelled local, and priced as configured.
    assert (first["model"], first["local"], second["model"]) == ("small", True, "small")
    prompt, completion = first["tokens"]
    assert first["cost"] == pytest.approx((prompt * 2.0 + completion * 4.0) / 1000)
    assert first["cost"] > 0 and second["cost"] > 0
    step = result.steps["summarise"]
    assert step.cost_usd == pytest.approx(first["cost"] + second["cost"])
    assert result.cost_usd == pytest.approx(step.cost_usd)
    assert step.model == "small"


def test_a_step_asking_for_an_unknown_model_fails_naming_it(tmp_path: Path) -> None:
    # Not a bare KeyError from the fallback chain: the step's error names the model and
    # the catalogue's models.
    with embedded_orchestrator(tmp_path) as orch:
        wf = Workflow("llm_unknown_model", app=orch)

        @wf.task
        def ask(text: str, ctx: StepContext) -> str:
            return ctx.llm.complete(text, model="gpt-9").text

        result = wf.run(text="hello", timeout=30)
    assert result.status is RunStatus.FAILED
    step = result.steps["ask"]
    assert step.error_type == "orchestration.errors.ConfigurationError"
    assert "'gpt-9' is not in the catalogue" in (step.error or "")
