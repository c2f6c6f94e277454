"""Per-run costs for ``bench/scaling.py``: counters read before and after a phase, and the
capacity arithmetic built on them.

Pure helpers (unit-tested in ``tests/unit/bench``): ``command_calls`` (``INFO
commandstats`` -> calls by command), ``delta``, ``per_run``, ``stat_cpu_ticks`` (a
``/proc/<pid>/stat`` line -> utime + stime), ``cpu_delta``, ``spread`` and ``capacity``.
Probes: ``pids_cpu`` (/proc), ``sql_counts`` (the files ``bench/sql_counter.py`` writes),
``pg_backends`` and ``pg_xact`` (``pg_stat_activity`` / ``pg_stat_database`` of the
bench's own database).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETTLE_TIMEOUT = 10.0
SETTLE_POLL = 0.05
TICKS = os.sysconf("SC_CLK_TCK")

# -- pure helpers ------------------------------------------------------------------------------


def command_calls(info: Mapping[str, Any]) -> dict[str, int]:
    """Calls by command from redis-py's ``info("commandstats")`` (``cmdstat_get`` -> ``get``;
    subcommands such as ``cmdstat_client|list`` keep their ``|``)."""
    return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in info.items()
            if key.startswith("cmdstat_")}


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` for every key of either (a key missing counts 0); zeros dropped."""
    out = {key: after.get(key, 0) - before.get(key, 0) for key in set(after) | set(before)}
    return {key: value for key, value in out.items() if value}


def per_run(counts: Mapping[str, float], runs: int) -> dict[str, float]:
    return {key: value / runs for key, value in counts.items()}


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) of a ``/proc/<pid>/stat`` line (the name may hold spaces
    and parentheses: fields are counted after its last ``)``)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields[0] is the state (stat field 3)


def cpu_delta(after: Mapping[int, float], before: Mapping[int, float]) -> tuple[float, int]:
    """CPU seconds used between two ``pids_cpu`` readings: a pid seen only after started in
    between (all its CPU counts); a pid seen only before is gone (its CPU since is lost,
    counted in the second value)."""
    used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return used, sum(1 for pid in before if pid not in after)


def spread(values: Iterable[float]) -> dict[str, float]:
    """min / median / max (NaN for none)."""
    data = list(values)
    if not data:
        return {"min": math.nan, "median": math.nan, "max": math.nan, "n": 0}
    return {"min": min(data), "median": statistics.median(data), "max": max(data),
            "n": len(data)}


@dataclass(frozen=True)
class Costs:
    """Measured costs of one run (CPU in seconds, the rest in counts)."""

    worker_cpu: float
    client_cpu: float
    redis_commands: float
    redis_cpu: float
    statements: float
    commits: float
    pings: float  # pre-ping round trips (PostgreSQL: each an autocommit transaction)
    db_cpu: float | None  # PostgreSQL backends' CPU; None on SQLite


def capacity(rate: float, costs: Costs, *, headroom: float = 0.7) -> dict[str, float]:
    """What ``rate`` runs/s needs, from measured per-run costs.

    - worker processes = rate x worker CPU per run / 1 core, and at ``headroom`` (a core
      planned at 70% busy); the same for the submitting client's cores;
    - Redis commands/s = rate x commands per run; Redis cores = rate x Redis CPU per run
      (Redis runs commands on one thread: above 1 core it must be sharded);
    - statements/s and commits/s = rate x per run; round trips/s add the pre-pings, and
      PostgreSQL's transactions/s = commits + pings (each ping is an autocommit);
      PostgreSQL cores = rate x backend CPU per run (backends only: WAL writer,
      checkpointer and autovacuum come on top).
    """
    out = {
        "rate": rate,
        "worker_cores": rate * costs.worker_cpu,
        "worker_processes": math.ceil(rate * costs.worker_cpu / headroom),
        "client_cores": rate * costs.client_cpu,
        "redis_ops": rate * costs.redis_commands,
        "redis_cores": rate * costs.redis_cpu,
        "statements": rate * costs.statements,
        "commits": rate * costs.commits,
        "round_trips": rate * (costs.statements + costs.pings),
        "transactions": rate * (costs.commits + costs.pings),
    }
    if costs.db_cpu is not None:
        out["db_cores"] = rate * costs.db_cpu
    return out


def db_cpu_per_run_published(runs_per_s: float, cpus: float, busy: float) -> float:
    """Database CPU seconds per run from a published figure (``cpus`` at ``busy``)."""
    return cpus * busy / runs_per_s


# -- probes ------------------------------------------------------------------------------------


def pids_cpu(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds so far of each live pid (gone ones are left out)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            out[pid] = stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / TICKS
        except (OSError, IndexError, ValueError):
            continue
    return out


def session_pids(sessions: Iterable[int]) -> list[int]:
    """Live pids whose session id is one of ``sessions`` (a worker and its pool children)."""
    wanted = set(sessions)
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) in wanted:
            pids.append(int(stat.parent.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sql_counts(directory: Path, *, after: float | None = None) -> dict[str, float]:
    """Summed counts of every process that wrote to ``directory``; with ``after``, first poll
    until each live writer wrote at least that late (so the phase's statements are in)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        files = []
        for path in directory.glob("*.json"):
            try:
                files.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # replaced while read: read again
                continue
        live = [f for f in files if _alive(int(f["pid"]))]
        if after is None or all(f["at"] >= after for f in live) or time.monotonic() > deadline:
            total: dict[str, float] = {}
            for counts in files:
                for key, value in counts.items():
                    if key not in ("pid", "at"):
                        total[key] = total.get(key, 0) + value
            return total
        time.sleep(SETTLE_POLL)


def pg_backends(admin: Any, database: str) -> list[int]:
    """Pids of the PostgreSQL backends connected to ``database``."""
    from sqlalchemy import text

    with admin.connect() as conn:
        rows = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :db"),
                            {"db": database})
        return [int(pid) for (pid,) in rows]


def pg_xact(admin: Any, database: str) -> dict[str, float]:
    """``xact_commit``, ``xact_rollback``, ``active_time`` (ms of statements executing, every
    session's, ended ones included) and ``sessions`` of ``database`` (a fresh snapshot)."""
    from sqlalchemy import text

    with admin.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = conn.execute(text("SELECT xact_commit, xact_rollback, active_time, sessions "
                                "FROM pg_stat_database WHERE datname = :db"),
                           {"db": database}).one()
    return {"commits": float(row[0]), "rollbacks": float(row[1]),
            "active_ms": float(row[2]), "sessions": float(row[3])}


def support_models_cpu(tickets: int = 300) -> dict[str, float]:
    """CPU seconds per ticket of the support workflow's two local models (classify, urgency),
    in this process, after their training (untimed) on the shipped sample tickets."""
    from tasks.support.models import load_sample_tickets, predict_category, predict_urgency

    texts = [ticket["text"] for ticket in load_sample_tickets(tickets)]
    predict_urgency(texts[0], predict_category(texts[0]).label)  # trains both
    began = time.process_time()
    labels = [predict_category(text).label for text in texts]
    middle = time.process_time()
    for text, label in zip(texts, labels, strict=True):
        predict_urgency(text, label)
    return {"classify": (middle - began) / len(texts),
            "urgency": (time.process_time() - middle) / len(texts), "tickets": len(texts)}
