"""The pure helpers of bench/scaling.py: counter parsing, deltas and the capacity arithmetic."""

from __future__ import annotations

import math

import pytest

from bench import sql_counter
from bench.scaling_costs import (
    Costs,
    capacity,
    command_calls,
    cpu_delta,
    db_cpu_per_run_published,
    delta,
    per_run,
    spread,
    stat_cpu_ticks,
)
from bench.scaling_report import costs_of, median_costs


def test_command_calls_reads_commandstats_and_keeps_subcommands() -> None:
    info = {"cmdstat_lpush": {"calls": 3, "usec": 9}, "cmdstat_client|list": {"calls": 2},
            "errorstat_ERR": {"count": 1}}
    assert command_calls(info) == {"lpush": 3, "client|list": 2}


def test_delta_counts_missing_keys_as_zero_and_drops_zeros() -> None:
    assert delta({"a": 5, "b": 2, "c": 1}, {"a": 1, "b": 2, "d": 4}) == {"a": 4, "c": 1,
                                                                          "d": -4}
    assert per_run({"a": 10.0}, 4) == {"a": 2.5}


def test_stat_cpu_ticks_counts_fields_after_the_last_parenthesis() -> None:
    # A process name with spaces and ')' must not shift the fields: utime 7, stime 5.
    fields = ["S", "1", "2", "3"] + ["0"] * 7 + ["7", "5"] + ["0"] * 10
    line = "4242 (celery) worker) " + " ".join(fields)
    assert stat_cpu_ticks(line) == 12


def test_cpu_delta_counts_new_pids_whole_and_reports_gone_ones() -> None:
    used, gone = cpu_delta({1: 3.0, 2: 0.5}, {1: 1.0, 3: 9.0})
    assert used == pytest.approx(2.5)
    assert gone == 1


def test_spread_of_nothing_is_nan() -> None:
    assert math.isnan(spread([])["median"])
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}


def test_capacity_multiplies_the_measured_costs_by_the_rate() -> None:
    costs = Costs(worker_cpu=0.005, client_cpu=0.001, redis_commands=30.0, redis_cpu=0.0005,
                  statements=15.0, commits=8.0, pings=9.0, db_cpu=0.004)
    cap = capacity(2000.0, costs)
    assert cap["worker_cores"] == pytest.approx(10.0)
    assert cap["worker_processes"] == 15  # 10 cores at 70% busy, rounded up
    assert cap["redis_ops"] == pytest.approx(60_000.0)
    assert cap["redis_cores"] == pytest.approx(1.0)
    assert cap["statements"] == pytest.approx(30_000.0)
    assert cap["round_trips"] == pytest.approx(48_000.0)
    assert cap["transactions"] == pytest.approx(34_000.0)
    assert cap["db_cores"] == pytest.approx(8.0)
    assert "db_cores" not in capacity(1.0, Costs(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None))


def test_published_anchor_is_cpu_seconds_per_run() -> None:
    # Hatchet: 2,000 runs/s at 83% of 8 CPUs.
    assert db_cpu_per_run_published(2000.0, 8.0, 0.83) == pytest.approx(0.00332)


def _phase(redis: dict[str, float], sql: dict[str, float], cpu: float) -> dict[str, object]:
    return {"worker_cpu": cpu, "client_cpu": cpu / 10, "redis_cpu": 0.0001, "redis": redis,
            "client_sql": sql, "worker_sql": sql, "db_cpu": 0.001}


def test_costs_add_the_client_phase_and_the_drain() -> None:
    config = {"client": _phase({"lpush": 1.0}, {"statements": 0.01, "commits": 0.01}, 0.0),
              "drain": _phase({"xadd": 9.0, "brpop": 1.0},
                              {"statements": 15.0, "commits": 8.0, "pings": 9.0}, 0.01)}
    costs = costs_of(config)
    assert costs.redis_commands == pytest.approx(11.0)
    assert costs.statements == pytest.approx(15.02)
    assert costs.commits == pytest.approx(8.02)
    assert costs.pings == pytest.approx(9.0)
    assert costs.db_cpu == pytest.approx(0.002)
    other = {**config, "drain": _phase({"xadd": 3.0}, {"statements": 5.0}, 0.03)}
    assert median_costs([config, other]).worker_cpu == pytest.approx(0.02)


def test_sql_verb_is_the_leading_keyword() -> None:
    assert sql_counter.verb("  UPDATE steps SET ...") == "update"
    assert sql_counter.verb("BEGIN IMMEDIATE") == "begin"
    assert sql_counter.verb("WITH x AS (SELECT 1) SELECT * FROM x") == "other"
    assert sql_counter.verb("") == "other"
