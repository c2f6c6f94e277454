"""The stateful agent (the articles' ``StatefulAgentOrchestrator``) as a workflow.

::

    load_state ─────────┐
    extract_intent ─────┼─> verify_identity (when the state requires it) ─> respond
    analyze_sentiment ──┘                                                     ▲
              └───────────────────────────────────────────────────────────────┘

- ``load_state``: the user's account state (shipped sample accounts; an unknown user
  is a new one) and how many turns the conversation already has;
- ``extract_intent`` and ``analyze_sentiment`` run in parallel; their outputs are stored
  with the run (the results DB) and handed by name to the steps downstream;
- ``verify_identity`` runs only when :func:`needs_verification` says so (an account on
  security hold, or an intent that moves money or closes the account): it records that a
  one-time challenge was sent; otherwise it is ``skipped`` and ``respond`` gets None;
- ``respond`` asks the user to complete the challenge (no model call, nothing about the
  account leaks) or answers through ``ctx.llm`` with the conversation's memory, then
  appends the exchange to the memory (keyed by ``user_id``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Final

from orchestration import Memory, StepContext, Workflow
from tasks.agent import signals

__all__ = ["AGENT_QUEUE", "agent", "analyze_sentiment", "extract_intent", "load_state",
           "needs_verification", "respond", "verify_identity"]

AGENT_QUEUE: Final = "default"  # light business logic; the reply goes to its model's queue
MODEL: Final = "gpt-4o-mini"

PROMPT: Final = (
    "You are a support agent for a data platform. The customer ({name}, on the {plan}) "
    "wrote the message below; its intent looks like {intent} and its tone {sentiment}. "
    "{tone}Reply in two or three sentences.\n\nMessage: {message}"
)

agent = Workflow("stateful_agent", inputs=["user_id", "message"],
                 memory=Memory(key="user_id", window=10, summarize_with=MODEL))


@cache
def _accounts() -> dict[str, dict[str, Any]]:
    text = resources.files("tasks.agent.data").joinpath("accounts.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {str(row["user_id"]): row for row in rows}


@agent.task(queue=AGENT_QUEUE)
def load_state(user_id: str, ctx: StepContext) -> dict[str, Any]:
    """The user's state: account flags, plan, and the turns remembered so far."""
    account = _accounts().get(str(user_id))
    # A read of what is stored (no summarising here: that happens where the LLM answers).
    summary, history = ctx.store.memory.load(ctx.workflow, ctx.memory.conversation)
    if account is None:
        return {"user_id": user_id, "known": False, "name": "there", "plan": "no plan",
                "requires_verification": False, "verification_channel": "email",
                "previous_messages": len(history), "summarised": summary is not None}
    return {"user_id": user_id, "known": True, "name": account["name"],
            "plan": account["plan"], "requires_verification": bool(account["security_hold"]),
            "verification_channel": account["verification_channel"],
            "previous_messages": len(history), "summarised": summary is not None}


@agent.task(queue=AGENT_QUEUE)
def extract_intent(message: str) -> dict[str, Any]:
    """What the user wants (``intent``, ``confidence``, the cues found)."""
    return signals.extract_intent(message)


@agent.task(queue=AGENT_QUEUE)
def analyze_sentiment(message: str) -> dict[str, Any]:
    """How the user feels (``label``, ``score`` in -1..1)."""
    return signals.analyze_sentiment(message)


def needs_verification(load_state: dict[str, Any], extract_intent: dict[str, Any]) -> bool:
    """The branch condition: a security hold, or an intent that moves money or access."""
    return bool(load_state["requires_verification"]) or \
        extract_intent["intent"] in signals.SENSITIVE_INTENTS


@agent.task(when=needs_verification, queue=AGENT_QUEUE)
def verify_identity(load_state: dict[str, Any], extract_intent: dict[str, Any]
                    ) -> dict[str, Any]:
    """Start verification: a one-time challenge on the account's channel."""
    reason = "security hold" if load_state["requires_verification"] else \
        f"sensitive request ({extract_intent['intent']})"
    return {"status": "challenge_sent", "channel": load_state["verification_channel"],
            "reason": reason}


@agent.task(model=MODEL, timeout=60, retries=1,
            on_error={"timeout": "route_to_fallback", "model_unavailable": "route_to_fallback"})
def respond(message: str, load_state: dict[str, Any], extract_intent: dict[str, Any],
            analyze_sentiment: dict[str, Any], ctx: StepContext,
            verify_identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reply: a verification prompt, or the standard flow's LLM answer with memory."""
    intent, sentiment = extract_intent["intent"], analyze_sentiment["label"]
    if verify_identity is not None:
        reply = (f"Before I can help with this, please confirm it is you: we sent a one-time "
                 f"code to your {verify_identity['channel']}.")
        flow, model = "verification", None
    else:
        tone = "Apologise briefly and be concrete. " if sentiment == "negative" else ""
        prompt = PROMPT.format(name=load_state["name"], plan=load_state["plan"],
                               intent=intent, sentiment=sentiment, tone=tone, message=message)
        history = ctx.memory.context().messages()
        completion = ctx.llm.complete([*history, {"role": "user", "content": prompt}])
        reply, flow, model = completion.text, "standard", completion.model
    ctx.memory.append(user=message, assistant=reply)
    return {"flow": flow, "reply": reply, "intent": intent, "sentiment": sentiment,
            "model": model}
