"""Ask the RAG chat a few questions in one conversation, on the embedded default.

``python -m tasks.rag.demo [--questions 5] [--conversation demo]``: each question's
answer, the model that gave it, the fused sources (marked ``*`` when the labelled set
says they are relevant) and which stores answered. With no ORCH_* settings it runs with
an in-process worker and SQLite under ./var/; with no API key the local provider answers.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.markup import escape

from orchestration import default_orchestrator
from tasks.rag.corpus import load_questions
from tasks.rag.workflow import rag


def main(argv: list[str] | None = None) -> int:
    """Run the questions; exit 1 if a run did not succeed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=5, help="how many shipped questions")
    parser.add_argument("--conversation", default="demo", help="the conversation id")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    questions = load_questions()
    step = max(1, len(questions) // max(1, args.questions))
    failed = 0
    for question in questions[::step][:args.questions]:
        started = time.perf_counter()
        result = rag.run(conversation_id=args.conversation, question=question.question,
                         timeout=120)
        elapsed = time.perf_counter() - started
        console.print(f"\n[bold]Q ({question.kind}):[/] {question.question}")
        if result.outputs.get("answer") is None:
            failed += 1
            console.print(f"[red]{result.status}[/]: {result.error}")
            continue
        answer, fused = result.outputs["answer"], result.outputs["fuse"]
        console.print(f"[bold]A[/] ({answer['model']}, {elapsed * 1000:.0f} ms, "
                      f"{answer['history_messages']} messages of history): "
                      f"{escape(answer['answer'])}")
        marked = [f"{doc}{'*' if doc in question.relevant else ''}" for doc in answer["sources"]]
        console.print(f"   sources: {', '.join(marked)}  (stores: {', '.join(fused['answered'])}"
                      f"{'; failed: ' + ', '.join(fused['failed']) if fused['failed'] else ''})")
    console.print(f"\ninspect the conversation: .venv/bin/orchestrate memory show "
                  f"{args.conversation}", soft_wrap=True)
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    default_orchestrator().shutdown()
    sys.exit(code)
