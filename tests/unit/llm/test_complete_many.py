"""``ctx.llm.complete_many``: one model call per prompt, concurrently, under the same
accounting as ``complete``; in a batched step each run pays its share of the calls."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.errors import ConfigurationError, ProviderError
from orchestration.llm.client import LLMClient
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV = "TEST_FAKE_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_FAKE_LLM_KEY}
models:
  scorer: {provider: fake, input_cost_per_1k: 1.0, output_cost_per_1k: 2.0}
  broken: {provider: fake, retries: 0}
default_model: scorer
"""


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("many")
    with FakeLLMServer() as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            wf = Workflow("many_scoring", inputs=["resume"], app=orch)

            @wf.task(batch_size=4, batch_wait=3600, model="scorer")
            def score(resume: list[str], ctx: StepContext) -> list[dict[str, Any]]:
                answers = ctx.llm.complete_many([f"Score: {r}" for r in resume])
                return [{"text": a.text, "cost": a.cost_usd} for a in answers]

            alone = Workflow("many_alone", inputs=["n"], app=orch)

            @alone.task(model="broken")
            def ask(n: int, ctx: StepContext) -> list[str]:
                return [c.text for c in ctx.llm.complete_many([f"q{i}" for i in range(n)])]

            yield SimpleNamespace(orch=orch, server=server, wf=wf, alone=alone)


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")


def test_a_batch_makes_one_call_per_element_and_each_run_pays_its_share(
        llm: SimpleNamespace) -> None:
    llm.server.reset()
    llm.server.configure("scorer", reply="8/10", prompt_tokens=100, completion_tokens=10)
    handles = llm.wf.submit_many([{"resume": f"r{i}"} for i in range(4)])
    results = [handle.wait(timeout=60) for handle in handles]
    assert llm.server.stats()["scorer"]["requests"] == 4
    per_call = (100 * 1.0 + 10 * 2.0) / 1000
    for result in results:
        assert result.status is RunStatus.SUCCEEDED
        assert result.outputs["score"]["text"] == "8/10"
        # The batch's four calls, shared by four runs: one call's cost each.
        assert result.steps["score"].cost_usd == pytest.approx(per_call)
        assert result.cost_usd == pytest.approx(per_call)


def test_a_failing_call_fails_the_whole_call(
        llm: SimpleNamespace) -> None:
    llm.server.reset()
    llm.server.configure("broken", status_sequence=[200, 400, 200])
    result = llm.alone.submit(n=3).wait(timeout=60)
    step = result.steps["ask"]
    assert step.status is StepStatus.FAILED
    assert step.error_type is not None and ProviderError.__name__ in step.error_type
    assert llm.server.stats()["broken"]["requests"] == 3  # every call ended first


def test_a_bad_concurrency_is_refused_naming_it() -> None:
    client = LLMClient(cast(Any, None), cast(Any, None))  # checked before any call
    with pytest.raises(ConfigurationError, match="concurrency"):
        client.complete_many(["x"], concurrency=0)
