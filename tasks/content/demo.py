"""Demo: the content-summary workflow over the shipped sample articles.

``python -m tasks.content.demo --articles 12``. With no ``ORCH_*`` settings it runs on the
embedded default (in-process worker, SQLite under ./var/). With no LLM configured, every
summary is refused by the quality gate three times (temperature 0.2, 0.5, 0.8) and the
extractive fallback answers; with ``OPENAI_API_KEY`` set, most pass on the first attempt.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestration import RunHandle, RunResult
from tasks.content.workflow import content, run_report


def load_articles(limit: int | None = None) -> list[dict[str, Any]]:
    """The shipped sample articles, optionally only the first ``limit``."""
    text = resources.files("tasks.content.data").joinpath("articles.jsonl").read_text("utf-8")
    articles = [json.loads(line) for line in text.splitlines() if line.strip()]
    return articles if limit is None else articles[:limit]


def main(argv: list[str] | None = None) -> int:
    """Run the articles, print one line per run and the gate failures; exit 1 on a failed run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--articles", type=int, default=12, help="how many sample articles")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per run")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)

    handles: list[RunHandle] = [content.submit(article=a) for a in load_articles(args.articles)]
    results: list[RunResult] = [h.wait(timeout=args.timeout) for h in handles]

    table = Table(title="content_summary runs")
    for column in ("article", "words", "run", "summarize", "attempts", "gate failures",
                   "source", "summary words"):
        table.add_column(column)
    total_failures = 0
    for result in results:
        report = run_report(result)
        total_failures += int(report["gate_failures"])
        table.add_row(str(report.get("article_id")), str(report.get("article_words")),
                      report["run_status"], report["summarize_status"], str(report["attempts"]),
                      str(report["gate_failures"]), str(report.get("source")),
                      str(report.get("summary_words")))
    console.print(table)
    console.print(f"{len(results)} runs, {total_failures} gate failures in all; "
                  f"inspect one with `orchestrate show {results[0].run_id}`" if results else
                  "no runs")
    return 0 if all(r.succeeded for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
