"""Context tokens per call: a window with a summary against the full history.

A 50-exchange conversation (each run reads ``ctx.memory.context()``, then appends the
user message and the assistant's answer: two turns) on the embedded default (in-process
worker, SQLite) with the fake LLM server as the summarising model. For every call the
report compares the tokens of the context the step got (summary + last ``window`` turns)
with the tokens of the whole history so far, counted the same way (the catalogue's
``chars/4`` estimate plus 4 tokens per message), and prints the mean, the last call and
the reduction; it also counts what the summaries cost (prompt tokens of the summarising
calls, as the fake server reports them: one per word), which the full history does
not pay.

The summariser is the fake server answering a fixed ~120-word summary: what a real model
asked to keep a summary short returns. Messages are 20-60 words from the user and 60-150
from the assistant, drawn with a fixed seed.

    .venv/bin/python bench/memory.py [--exchanges 50] [--window 10]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestration import Memory, StepContext, Workflow  # noqa: E402
from orchestration.llm.tokens import MESSAGE_OVERHEAD, TokenCounter  # noqa: E402
from orchestration.testing import embedded_orchestrator  # noqa: E402
from tests.fakes.llm_server import FakeLLMServer  # noqa: E402

KEY_ENV = "BENCH_FAKE_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: BENCH_FAKE_LLM_KEY}
models:
  chat: {provider: fake, context_window: 128000, tokens: "chars/4"}
  summarizer: {provider: fake, retries: 0, context_window: 128000}
default_model: chat
"""
WORDS = ["order", "refund", "delivery", "account", "password", "invoice", "shipping", "address",
         "premium", "plan", "billing", "card", "subscription", "upgrade", "cancel", "discount",
         "warranty", "return", "label", "courier", "tracking", "number", "support", "agent",
         "weekend", "monday", "yesterday", "broken", "screen", "battery", "charger",
         "replacement", "email", "phone", "verification", "code", "login", "error", "message"]


def text(rng: random.Random, low: int, high: int) -> str:
    """A message of ``low`` to ``high`` words."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def run(exchanges: int, window: int) -> dict[str, Any]:
    """Run the conversation; per call, (context tokens, full-history tokens)."""
    rng = random.Random(14)
    counter = TokenCounter("chars/4")
    os.environ[KEY_ENV] = "sk-bench"
    with tempfile.TemporaryDirectory() as directory, FakeLLMServer() as server:
        models = Path(directory) / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        server.configure("summarizer", reply=text(random.Random(1), 120, 120))
        with embedded_orchestrator(Path(directory), models_file=models,
                                   redis_url=None) as orch:
            chat = Workflow("bench_memory", inputs=["conversation_id", "message", "answer"],
                            app=orch, memory=Memory(key="conversation_id", window=window,
                                                    summarize_with="summarizer"))

            @chat.task(model="chat")
            def reply(message: str, answer: str, ctx: StepContext) -> int:
                tokens = ctx.memory.context().tokens
                ctx.memory.append(user=message, assistant=answer)
                return tokens

            history: list[str] = []
            rows = []
            spent = 0
            for _ in range(exchanges):
                message, answer = text(rng, 20, 60), text(rng, 60, 150)
                result = chat.run(conversation_id="bench", message=message, answer=answer,
                                  timeout=60)
                full = sum(counter.count(turn) + MESSAGE_OVERHEAD for turn in history)
                rows.append((result.outputs["reply"], full))
                spent += result.steps["reply"].tokens_in  # the summarising calls' prompts
                history += [message, answer]
            calls = server.stats().get("summarizer", {}).get("requests", 0)
    return {"rows": rows, "summary_calls": calls, "summary_prompt_tokens": spent}


def main() -> None:
    """Print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=50)
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    report = run(args.exchanges, args.window)
    rows = report["rows"]
    windowed = [w for w, _ in rows]
    full = [f for _, f in rows]
    print(f"{args.exchanges} exchanges ({2 * args.exchanges} turns), window {args.window} "
          f"turns, summariser calls {report['summary_calls']}")
    print(f"{'call':>5} {'window+summary':>15} {'full history':>13}")
    for index in (0, 4, 9, 19, 29, 39, len(rows) - 1):
        if index < len(rows):
            print(f"{index + 1:>5} {rows[index][0]:>15} {rows[index][1]:>13}")
    mean_w, mean_f = statistics.mean(windowed), statistics.mean(full)
    print(f"mean context tokens per call: {mean_w:.0f} with window + summary, {mean_f:.0f} "
          f"with the full history: {100 * (1 - mean_w / mean_f):.0f}% fewer")
    print(f"last call: {windowed[-1]} vs {full[-1]}: "
          f"{100 * (1 - windowed[-1] / full[-1]):.0f}% fewer")
    paid = report["summary_prompt_tokens"]
    print(f"summarising cost {paid} prompt tokens in all (the fake counts words); with "
          f"them: {100 * (1 - (sum(windowed) + paid) / sum(full)):.0f}% fewer tokens sent")


if __name__ == "__main__":
    main()
