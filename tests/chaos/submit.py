"""Submit runs of chaos workflows; prints one JSON line: the run ids in submission order.

    python -m tests.chaos.submit 300 chaos_kills chaos_kills_hops   # alternating
    python -m tests.chaos.submit 4 chaos_fatal_threads:ok chaos_fatal_threads:exit

``<workflow>:<kind>`` submits a fatal-step workflow with that ``kind`` input instead of a
ticket text.

Run as a subprocess with the scenario's ``ORCH_*`` environment, so the test process
never builds the default orchestrator (two scenarios in one session use two brokers).
"""

from __future__ import annotations

import json
import sys

from tests.chaos.workflows import WORKFLOWS

TEXTS = (
    "Can't login since update v3.2",
    "Please add dark mode to the dashboard",
    "I was charged twice this month",
    "The export button does nothing",
)


def main(argv: list[str]) -> int:
    count, specs = int(argv[0]), [name.partition(":") for name in argv[1:]]
    run_ids = []
    for n in range(count):
        name, _, kind = specs[n % len(specs)]
        inputs = {"kind": kind} if kind else {"text": TEXTS[n % len(TEXTS)]}
        run_ids.append(WORKFLOWS[name].submit(ticket_id=n, **inputs).run_id)
    print(json.dumps(run_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
