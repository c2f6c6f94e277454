"""RAG retrieval: recall@5 of each store and of their fusion, and what parallel steps buy.

    python bench/rag.py [--rounds 3] [--latency-ms 0 25] [--questions N]

1. **Recall@5** on the shipped labelled questions (``tasks/rag/data/questions.jsonl``):
   for each question, the share of its relevant documents among a ranking's first five,
   averaged over the questions; for each store alone (vector: sqlite-vec with the local
   LSA embedder; facts: the SQL table; graph: networkx) and for reciprocal rank fusion
   of the three (each store's top 10 fused, top 5 kept), overall and per question kind.
2. **p50 latency of the three retrievals**, per question:
   - in-process: the three store calls one after another, and on three threads;
   - as workflows on the embedded default (in-process worker, memory broker, SQLite):
     ``bench_rag_parallel`` (the RAG workflow's shape: three search steps then a fusion
     step) against ``bench_rag_sequence`` (the same steps chained), client wall time
     around ``run()`` (submit and wait);
   each with every store call slowed by ``--latency-ms`` (0: the stores as they are, on
   this machine; 25: a stand-in for stores across a network). After an untimed warm-up
   the two take turns question by question (which goes first alternates), so machine
   noise hits both. The ratio printed is parallel / sequence (below 1: parallel wins).

Nothing is downloaded: the stores are built from the shipped corpus into a temporary
``RAG_CACHE_DIR``. Exits 0 when every run succeeded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAG_CACHE_DIR", tempfile.mkdtemp(prefix="bench-rag-"))

from orchestration import RunStatus, default_orchestrator  # noqa: E402
from orchestration.retrieval import reciprocal_rank_fusion  # noqa: E402
from orchestration.testing import embedded_settings  # noqa: E402
from tasks.rag.corpus import Question, load_questions  # noqa: E402
from tasks.rag.stores import stores  # noqa: E402

STORES = ("vector", "facts", "graph")


def recall_at_5(found: list[str], relevant: tuple[str, ...]) -> float:
    """The share of ``relevant`` among the first five of ``found``."""
    return len(set(found[:5]) & set(relevant)) / len(relevant)


def recall_table(questions: list[Question]) -> dict[str, dict[str, float]]:
    """Mean recall@5 per ranking, overall (``"all"``) and per question kind."""
    built = stores()
    scores: dict[str, dict[str, list[float]]] = {}
    for q in questions:
        rankings = {name: getattr(built, name).search(q.question, 10) for name in STORES}
        ids = {name: [h.doc_id for h in hits] for name, hits in rankings.items()}
        ids["fusion"] = [h.doc_id for h in reciprocal_rank_fusion(rankings, limit=5)]
        for name, found in ids.items():
            for kind in ("all", q.kind):
                scores.setdefault(name, {}).setdefault(kind, []).append(
                    recall_at_5(found, q.relevant))
    return {name: {kind: statistics.fmean(values) for kind, values in kinds.items()}
            for name, kinds in scores.items()}


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def in_process(questions: list[Question], rounds: int) -> tuple[float, float]:
    """p50 (ms) of the three store calls in sequence, and on three threads.

    After one untimed pass (each thread opens its own store connections), the two take
    turns question by question, so machine noise hits both alike.
    """
    from bench import rag_workflows as rw

    calls = (rw.vectors, rw.facts, rw.graph)
    sequential: list[float] = []
    threaded: list[float] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        def in_sequence(question: str) -> None:
            for call in calls:
                call(question)

        def on_threads(question: str) -> None:
            list(pool.map(lambda call: call(question), calls))

        for q in questions[:3]:
            in_sequence(q.question)
            on_threads(q.question)
        for round_number in range(rounds):
            for index, q in enumerate(questions):
                pair = [(sequential, in_sequence), (threaded, on_threads)]
                if (index + round_number) % 2:
                    pair.reverse()
                for samples, run in pair:
                    samples.append(_timed(lambda run=run, q=q: run(q.question)))
    return _p50_ms(sequential), _p50_ms(threaded)


def workflows(questions: list[Question], rounds: int) -> tuple[float, float, int]:
    """p50 (ms) of ``run()`` for the parallel and the sequence shapes; runs that failed."""
    from bench import rag_workflows as rw

    samples: dict[str, list[float]] = {"parallel": [], "sequence": []}
    failed = 0
    shapes = {"parallel": rw.parallel, "sequence": rw.sequence}
    for name in shapes:  # untimed warm-up: queues' consumers and pools start
        shapes[name].run(question=questions[0].question, timeout=60)
    for round_number in range(rounds):
        for index, q in enumerate(questions):
            order = ["parallel", "sequence"] if (index + round_number) % 2 == 0 else \
                ["sequence", "parallel"]
            for name in order:
                started = time.perf_counter()
                result = shapes[name].run(question=q.question, timeout=60)
                samples[name].append(time.perf_counter() - started)
                failed += result.status is not RunStatus.SUCCEEDED
    return _p50_ms(samples["parallel"]), _p50_ms(samples["sequence"]), failed


def main(argv: list[str] | None = None) -> int:
    """Print the recall table and the latency rows; exit 1 if any run failed."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="workflow rounds per shape")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 25.0],
                        help="added latency per store call, one latency row each")
    parser.add_argument("--questions", type=int, default=0, help="first N questions (0: all)")
    args = parser.parse_args(argv)

    questions = load_questions()
    if args.questions:
        questions = questions[:args.questions]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
          f"load {load:.1f}; {len(questions)} questions; cache {os.environ['RAG_CACHE_DIR']}")

    started = time.perf_counter()
    table = recall_table(questions)
    print(f"stores built and questions scored in {time.perf_counter() - started:.1f} s\n")
    kinds = ["all", *sorted({q.kind for q in questions})]
    print("recall@5       " + "".join(f"{kind:>10}" for kind in kinds))
    for name in (*STORES, "fusion"):
        print(f"{name:<15}" + "".join(f"{table[name].get(kind, float('nan')):>10.3f}"
                                      for kind in kinds))
    best = max(STORES, key=lambda name: table[name]["all"])
    print(f"fusion / best single store ({best}): "
          f"{table['fusion']['all'] / table[best]['all']:.2f}x\n")

    orchestrator = default_orchestrator()
    directory = Path(tempfile.mkdtemp(prefix="bench-rag-db-"))
    orchestrator.reconfigure(embedded_settings(directory))
    from bench import rag_workflows  # noqa: F401 - registers the two shapes

    failed = 0
    print("p50 ms per question     added/call  sequence  parallel  parallel/sequence")
    try:
        for latency in args.latency_ms:
            os.environ["BENCH_RAG_LATENCY_MS"] = str(latency)
            sequential, threaded = in_process(questions, args.rounds)
            parallel, chained, lost = workflows(questions, args.rounds)
            failed += lost
            print(f"in-process calls        {latency:>7.0f} ms  {sequential:>8.2f}  "
                  f"{threaded:>8.2f}  {threaded / sequential:>10.2f}x")
            print(f"workflow (embedded)     {latency:>7.0f} ms  {chained:>8.2f}  "
                  f"{parallel:>8.2f}  {parallel / chained:>10.2f}x")
    finally:
        orchestrator.shutdown()
    if failed:
        print(f"{failed} workflow runs did not succeed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
