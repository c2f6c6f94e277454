"""The stateful-agent example: local signals, the branch condition, the workflow."""

from __future__ import annotations

import pytest

from orchestration import Orchestrator, RunStatus, StepStatus
from tasks.agent import signals
from tasks.agent.workflow import agent, needs_verification


@pytest.mark.parametrize(("message", "intent"), [
    ("Please close my account today", "close_account"),
    ("I need to update my card, the payment method expired", "change_payment"),
    ("I am locked out, password reset does not arrive", "account_access"),
    ("Why was I charged twice on this invoice?", "billing_question"),
    ("The export is broken and fails with an error", "technical_issue"),
    ("What time zone do schedules use?", "general_question"),
])
def test_intent(message: str, intent: str) -> None:
    assert signals.extract_intent(message)["intent"] == intent


def test_sentiment() -> None:
    assert signals.analyze_sentiment("Thanks, that was great")["label"] == "positive"
    assert signals.analyze_sentiment("Broken again, this is unacceptable")["label"] == \
        "negative"
    assert signals.analyze_sentiment("What is the price?") == {"label": "neutral",
                                                               "score": 0.0}


def test_verification_is_needed_for_a_hold_or_a_sensitive_intent() -> None:
    calm = {"intent": "general_question"}
    assert needs_verification({"requires_verification": True}, calm)
    assert not needs_verification({"requires_verification": False}, calm)
    assert needs_verification({"requires_verification": False}, {"intent": "close_account"})


def test_a_known_user_without_a_hold_gets_the_standard_flow(
    embedded_default: Orchestrator
) -> None:
    result = agent.run(user_id="u-100", message="Thanks! How do schedules pick a time zone?",
                       timeout=60)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["verify_identity"].status is StepStatus.SKIPPED
    reply = result.outputs["respond"]
    assert reply["flow"] == "standard"
    assert reply["sentiment"] == "positive"
    assert reply["model"] == "local-small"
    assert result.outputs["load_state"]["name"] == "Ines"


def test_a_security_hold_takes_the_verification_branch(embedded_default: Orchestrator) -> None:
    result = agent.run(user_id="u-101", message="How do schedules pick a time zone?",
                       timeout=60)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["verify_identity"].status is StepStatus.SUCCEEDED
    assert result.outputs["verify_identity"] == {"status": "challenge_sent",
                                                 "channel": "authenticator app",
                                                 "reason": "security hold"}
    reply = result.outputs["respond"]
    assert reply["flow"] == "verification" and reply["model"] is None
    assert "authenticator app" in reply["reply"]


def test_the_conversation_is_remembered_per_user(embedded_default: Orchestrator) -> None:
    first = agent.run(user_id="u-102", message="What time zone do schedules use?", timeout=60)
    second = agent.run(user_id="u-102", message="Please close my account", timeout=60)
    stranger = agent.run(user_id="u-999", message="hello", timeout=60)

    assert first.outputs["load_state"]["previous_messages"] == 0
    assert second.outputs["load_state"]["previous_messages"] == 2
    assert stranger.outputs["load_state"] == {
        "user_id": "u-999", "known": False, "name": "there", "plan": "no plan",
        "requires_verification": False, "verification_channel": "email",
        "previous_messages": 0, "summarised": False}
    turns = embedded_default.store.memory.turns("u-102")["stateful_agent"]
    # The verification flow's exchange is remembered too.
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[3].content == second.outputs["respond"]["reply"]
