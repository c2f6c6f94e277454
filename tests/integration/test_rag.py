"""The RAG chat and stateful-agent examples end to end: on real workers (Redis +
PostgreSQL), on the embedded default in a fresh process, and with a model that times out.

The workers import ``tasks.rag.workflow`` and ``tasks.agent.workflow`` (as a deployment's
``WORKFLOW_MODULES`` makes them do) and build the stores into a throwaway
``RAG_CACHE_DIR``. With PostgreSQL as the results database the facts table is created
there, so the SQL store is exercised on PostgreSQL here and on SQLite in the unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from orchestration import RunStatus, StepStatus, default_orchestrator
from orchestration.retrieval import FactStore
from tasks.agent.workflow import agent
from tasks.rag.corpus import load_questions
from tasks.rag.workflow import rag
from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 90.0
SEARCHES = ("search_vectors", "search_facts", "search_graph")
# Questions whose fused top 5 holds a relevant document (see bench/rag.py for recall).
QUESTIONS = ("q01", "q04", "q16", "q17", "q30", "q40")


def _queues(*workflows: Any) -> list[str]:
    return sorted({bound.queue for workflow in workflows
                   for bound in workflow.validate().steps.values()})


@pytest.fixture(scope="module")
def example_workers(workers: Any, worker_logs: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One threads worker (-c 4) on every queue of the two example workflows."""
    env = dict(os.environ)
    env["ORCH_IMPORTS"] = ",".join([*filter(None, env.get("ORCH_IMPORTS", "").split(",")),
                                    "tasks.rag.workflow", "tasks.agent.workflow"])
    env["RAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("rag-cache"))
    pool = type(workers)(worker_logs, env=env)  # the suite's Workers, with this env
    try:
        pool.start("it-examples", _queues(rag, agent), pool="threads", concurrency=4)
        yield pool
    finally:
        pool.stop_all()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.workers
def test_rag_answers_on_workers_with_facts_in_postgresql(example_workers: Any) -> None:
    questions = {q.qid: q for q in load_questions()}
    handles = {qid: rag.submit(conversation_id=f"it-{qid}", question=questions[qid].question)
               for qid in QUESTIONS}
    results = {qid: handle.wait(timeout=RUN_TIMEOUT_S) for qid, handle in handles.items()}

    for qid, result in results.items():
        assert result.status is RunStatus.SUCCEEDED, (qid, result.error)
        for step in (*SEARCHES, "fuse", "answer"):
            assert result.steps[step].status is StepStatus.SUCCEEDED, (qid, step)
            assert result.steps[step].worker in example_workers.serving(
                result.steps[step].queue), (qid, step)
        fused = result.outputs["fuse"]
        assert fused["failed"] == [], qid
        sources = result.outputs["answer"]["sources"]
        assert len(sources) == 5, qid
        assert set(sources) & set(questions[qid].relevant), (qid, sources)
        assert result.outputs["answer"]["local"] is True  # hermetic: no API key

    # The SQL store used the results database (PostgreSQL): its table is there, loaded once.
    engine = default_orchestrator().store.engine
    assert engine.dialect.name == "postgresql"
    assert "rag_facts" in inspect(engine).get_table_names()
    with engine.connect() as connection:
        facts = connection.execute(text("SELECT count(*) FROM rag_facts")).scalar_one()
        versions = connection.execute(text("SELECT count(*) FROM rag_facts_meta")).scalar_one()
    assert facts > 200 and versions == 1
    # On PostgreSQL too, a question or a lookup is data, never SQL.
    store = FactStore(engine, table="rag_facts")
    assert store.lookup("billing-api' OR '1'='1") == []
    found = store.search("billing api'; DROP TABLE rag_facts; -- who owns it?")
    assert found[0].doc_id == "svc-billing-api"
    assert store.count() == facts


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.workers
def test_a_conversation_is_remembered_across_runs_on_workers(example_workers: Any) -> None:
    first = rag.run(conversation_id="it-memory", question="Which team owns billing-api?",
                    timeout=RUN_TIMEOUT_S)
    second = rag.run(conversation_id="it-memory", question="Who leads it?",
                     timeout=RUN_TIMEOUT_S)

    assert first.status is RunStatus.SUCCEEDED and second.status is RunStatus.SUCCEEDED
    assert first.outputs["answer"]["history_messages"] == 0
    assert second.outputs["answer"]["history_messages"] == 2
    turns = default_orchestrator().store.memory.turns("it-memory")["rag_chat"]
    assert [t.content for t in turns[::2]] == ["Which team owns billing-api?", "Who leads it?"]


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.workers
def test_the_agent_verifies_only_when_the_state_requires_it(example_workers: Any) -> None:
    standard = agent.submit(user_id="u-100", message="Thanks! Which export formats exist?")
    held = agent.submit(user_id="u-104", message="Which export formats exist?")
    sensitive = agent.submit(user_id="u-102", message="Please close my account")
    standard_run, held_run, sensitive_run = (h.wait(timeout=RUN_TIMEOUT_S)
                                             for h in (standard, held, sensitive))

    for run in (standard_run, held_run, sensitive_run):
        assert run.status is RunStatus.SUCCEEDED, run.error
        for step in ("load_state", "extract_intent", "analyze_sentiment", "respond"):
            assert run.steps[step].status is StepStatus.SUCCEEDED, (run.inputs, step)
    assert standard_run.steps["verify_identity"].status is StepStatus.SKIPPED
    assert standard_run.outputs["respond"]["flow"] == "standard"
    assert standard_run.outputs["respond"]["model"] == "local-small"
    assert held_run.outputs["verify_identity"]["reason"] == "security hold"
    assert held_run.outputs["respond"]["flow"] == "verification"
    assert sensitive_run.outputs["verify_identity"]["reason"] == \
        "sensitive request (close_account)"
    assert sensitive_run.outputs["respond"]["flow"] == "verification"


# -- a fresh process on the embedded default ------------------------------------------------

_EMBEDDED = """
import json, sys
from orchestration import default_orchestrator
from tasks.rag.workflow import rag
from tasks.agent.workflow import agent
orchestrator = default_orchestrator()
assert orchestrator.settings.embedded, orchestrator.settings.broker_url
answers = [rag.run(conversation_id="c-1", question=q, timeout=120)
           for q in ("How much does the Business plan cost per month?",
                     "Which team owns billing-api?")]
verified = agent.run(user_id="u-101", message="hello", timeout=120)
plain = agent.run(user_id="u-100", message="hello", timeout=120)
print(json.dumps({
    "rag": [{"status": r.status.value, "steps": {n: s.status.value for n, s in r.steps.items()},
             "answer": r.outputs.get("answer")} for r in answers],
    "agent": [{"status": r.status.value, "verify": r.steps["verify_identity"].status.value,
               "flow": (r.outputs.get("respond") or {}).get("flow")}
              for r in (verified, plain)],
    "database": orchestrator.store.engine.url.render_as_string(),
}))
orchestrator.shutdown()
"""


def _fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's fresh machine: no ORCH_* settings but the results DB's path, no API keys."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORCH_", "RAG_")) and not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), RAG_CACHE_DIR=str(tmp_path / "rag"),
               ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'results.db'}", **extra)
    return env


def _run_child(script: str, env: dict[str, str]) -> dict[str, Any]:
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=240, check=False)
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_both_examples_run_on_the_embedded_default(tmp_path: Path) -> None:
    report = _run_child(_EMBEDDED, _fresh_env(tmp_path))

    assert report["database"].startswith("sqlite:///")
    price, owner = report["rag"]
    for run in (price, owner):
        assert run["status"] == "succeeded", run
        assert set(run["steps"].values()) == {"succeeded"}, run
    assert price["answer"]["sources"][0] == "plan-business"
    assert "team-payments" in owner["answer"]["sources"]
    assert "[local fallback" in price["answer"]["answer"]
    assert report["agent"] == [
        {"status": "succeeded", "verify": "succeeded", "flow": "verification"},
        {"status": "succeeded", "verify": "skipped", "flow": "standard"}]


# -- the answer model times out: the smaller one answers ------------------------------------

_FALLBACK = """
import json
from tasks.rag.workflow import rag
r = rag.run(conversation_id="c-2", question="Which team owns billing-api?", timeout=120)
step = r.steps["answer"]
print(json.dumps({"status": r.status.value, "answer": r.outputs.get("answer"),
                  "attempts": step.attempts, "step_status": step.status.value,
                  "attempt_log": step.attempt_log}, default=str))
"""


def test_the_answer_routes_to_the_smaller_model_when_the_big_one_times_out(
    tmp_path: Path
) -> None:
    with FakeLLMServer(hang_limit_s=20) as server:
        catalogue = {
            "providers": {"fake": {"kind": "openai", "base_url": server.url,
                                   "api_key_env": "FAKE_LLM_KEY"},
                          "local": {"kind": "local"}},
            "models": {
                # retries: 2 would re-ask a timed-out model; route_to_fallback does not.
                "gpt-4o": {"provider": "fake", "timeout": 0.5, "retries": 2,
                           "fallbacks": ["gpt-4o-mini"]},
                "gpt-4o-mini": {"provider": "fake", "timeout": 10, "fallbacks": ["local-small"]},
                "local-small": {"provider": "local"},
            },
            "default_model": "gpt-4o-mini",
        }
        models = tmp_path / "models.yaml"
        models.write_text(json.dumps(catalogue))  # JSON is YAML
        server.configure("gpt-4o", hang=True)
        report = _run_child(_FALLBACK, _fresh_env(tmp_path, ORCH_MODELS_FILE=str(models),
                                                  FAKE_LLM_KEY="sk-fake"))
        stats = server.stats()

    assert report["status"] == "succeeded", report
    assert report["step_status"] == "succeeded" and report["attempts"] == 1, report
    assert report["answer"]["model"] == "gpt-4o-mini", report
    assert report["answer"]["local"] is False
    assert stats["gpt-4o"]["requests"] == 1  # timed out once, not retried
    assert stats["gpt-4o"]["hung"] == 1
    assert stats["gpt-4o-mini"]["requests"] == 1
