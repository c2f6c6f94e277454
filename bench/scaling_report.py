"""The report of ``bench/scaling.py``: runs/s per worker count, per-run costs, the capacity model.

Everything printed is measured in the same run, except the published anchors the capacity
model compares with (Hatchet: 2,000 runs/s at 83% of an 8-CPU PostgreSQL; DBOS: 43,000
workflows/s on a 96-vCPU PostgreSQL), which are labelled as such.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from dataclasses import replace
from typing import Any

from bench.scaling_costs import Costs, capacity, db_cpu_per_run_published, spread

TICKETS_PER_DAY = 50_000
RATES = (("2,000 runs/s", 2000.0), ("10,000 runs/s", 10_000.0))
HATCHET = (2000.0, 8.0, 0.83)  # runs/s, CPUs, busy
DBOS = (43_000.0, 96.0, 1.0)  # workflows/s, vCPUs, busy (not published: assumed saturated)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _sum(counts: dict[str, float], key: str) -> float:
    return float(counts.get(key, 0.0))


def _rates(samples: list[dict[str, Any]]) -> dict[str, float]:
    return spread(s["runs"] / s["wall"] for s in samples)


def _fmt_spread(s: dict[str, float], digits: int = 0) -> str:
    if not s["n"]:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def costs_of(config: dict[str, Any]) -> Costs:
    """One worker count's per-run costs: the counted phase's client part plus its drain."""
    client, drain = config["client"], config["drain"]
    return Costs(
        worker_cpu=drain["worker_cpu"] + client["worker_cpu"],
        client_cpu=client["client_cpu"],
        redis_commands=sum(client["redis"].values()) + sum(drain["redis"].values()),
        redis_cpu=client["redis_cpu"] + drain["redis_cpu"],
        statements=_sum(client["client_sql"], "statements")
        + _sum(client["worker_sql"], "statements") + _sum(drain["worker_sql"], "statements"),
        commits=_sum(client["client_sql"], "commits") + _sum(client["worker_sql"], "commits")
        + _sum(drain["worker_sql"], "commits"),
        pings=_sum(client["client_sql"], "pings") + _sum(client["worker_sql"], "pings")
        + _sum(drain["worker_sql"], "pings"),
        db_cpu=(client["db_cpu"] + drain["db_cpu"]) if "db_cpu" in drain else None)


def median_costs(configs: list[dict[str, Any]]) -> Costs:
    """Per-run costs, the median of each figure over the worker counts."""
    each = [costs_of(c) for c in configs]

    def med(name: str) -> Any:
        values = [getattr(c, name) for c in each if getattr(c, name) is not None]
        return statistics.median(values) if values else None

    return Costs(**{name: med(name) for name in Costs.__dataclass_fields__})


def report(args: argparse.Namespace, info: dict[str, Any], results: list[dict[str, Any]]) -> None:
    import celery
    import sqlalchemy

    from bench.overhead import machine

    print()
    print("Scaling: runs/s of 4-step workflows with N worker processes, and per-run costs")
    print(f"  machine : {machine()}; Python {platform.python_version()}, Celery "
          f"{celery.__version__}, SQLAlchemy {sqlalchemy.__version__}")
    print(f"  load    : 1-min load {info['load_start']:.2f} at start, {info['load_end']:.2f} at "
          "end (shared machine; per-config loads below)")
    print(f"  engine  : {info['revision']}")
    print(f"  workers : N x `celery worker -P {args.pool} -c {args.concurrency}`, one queue "
          f"set; {args.runs} runs per batch, {args.samples} submit_many + "
          f"{args.single_samples} x {args.single_runs} single submits, {args.warmup} warm-up runs")
    print("  broker  : the bench's own redis-server (loopback, no persistence)")
    print()
    _throughput(results)
    _per_run(results)
    _commands(results)
    _crosscheck(results)
    _capacity(results, info.get("support_models"))
    print(f"\nwhole bench: {info['elapsed']:.0f} s")


def _throughput(results: list[dict[str, Any]]) -> None:
    header = (f"{'configuration':<30}{'N':>3}{'submit_many runs/s':>24}{'single runs/s':>16}"
              f"{'drain runs/s':>14}{'worker CPU/run':>16}{'busy cores':>12}{'load':>12}")
    print(header)
    print("-" * len(header))
    for result in results:
        for index, config in enumerate(result["configs"]):
            rates = _rates(config["samples"])
            single = _rates(config["single"])
            drain = config["drain"]
            cpu = statistics.median([s["worker_cpu"] for s in config["samples"]] or [0.0])
            busy = cpu * rates["median"] if rates["n"] else float("nan")
            label = result["spec"]["label"] if index == 0 else ""
            print(f"{label:<30}{config['workers']:>3}{_fmt_spread(rates):>24}"
                  f"{_fmt_spread(single):>16}{drain['runs'] / drain['wall']:>14.0f}"
                  f"{_ms(cpu) + ' ms':>16}{busy:>12.2f}"
                  f"{config['load_start']:>6.1f}-{config['load_end']:<5.1f}")
    print("submit_many / single: runs/s from the first submit until every run is done, "
          "median (min-max); drain: the\n  counted phase's queue, pre-filled, drained by "
          "N workers; busy cores: worker CPU/run x median runs/s.\n")


def _per_run(results: list[dict[str, Any]]) -> None:
    print("Per run, counted (client = one submit_many with no worker consuming; workers = "
          "their drain):")
    header = (f"{'configuration':<30}{'N':>3}{'Redis cmds c+w':>16}{'SQL stmts c+w':>15}"
              f"{'commits c+w':>13}{'pings c+w':>13}{'CPU ms client':>14}{'worker':>8}{'Redis':>7}"
              f"{'PG':>7}")
    print(header)
    print("-" * len(header))
    for result in results:
        for index, config in enumerate(result["configs"]):
            c, d = config["client"], config["drain"]
            w_sql = {k: _sum(c["worker_sql"], k) + _sum(d["worker_sql"], k)
                     for k in ("statements", "commits", "pings")}
            label = result["spec"]["label"] if index == 0 else ""
            db = _ms(c["db_cpu"] + d["db_cpu"]) if "db_cpu" in d else "-"
            print(f"{label:<30}{config['workers']:>3}"
                  f"{sum(c['redis'].values()):>7.1f} + {sum(d['redis'].values()):<6.1f}"
                  f"{_sum(c['client_sql'], 'statements'):>6.1f} + {w_sql['statements']:<6.1f}"
                  f"{_sum(c['client_sql'], 'commits'):>5.2f} + {w_sql['commits']:<5.2f}"
                  f"{_sum(c['client_sql'], 'pings'):>5.2f} + {w_sql['pings']:<5.2f}"
                  f"{_ms(c['client_cpu']):>14}{_ms(c['worker_cpu'] + d['worker_cpu']):>8}"
                  f"{_ms(c['redis_cpu'] + d['redis_cpu']):>7}{db:>7}")
            if config.get("started_early"):
                print(f"{'':<33}({config['started_early']} runs started before the workers "
                      "were told to consume again)")
    print()


def _top(counts: dict[str, float]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {value:.3g}" for name, value in ordered if value >= 0.0001)


def _commands(results: list[dict[str, Any]]) -> None:
    for result in results:
        config = result["configs"][0]
        c, d = config["client"], config["drain"]
        print(f"{result['spec']['label']}, N={config['workers']}, per run:")
        print(f"  Redis, client : {_top(c['redis'])}")
        print(f"  Redis, workers: {_top(d['redis'])}")
        verbs = {k.removeprefix('verb_'): v for k, v in c["client_sql"].items()
                 if k.startswith("verb_")}
        print(f"  SQL, client   : {_top(verbs)}; commits {_sum(c['client_sql'], 'commits'):.2f},"
              f" rollbacks {_sum(c['client_sql'], 'rollbacks'):.2f}")
        verbs = {k.removeprefix('verb_'): v for k, v in d["worker_sql"].items()
                 if k.startswith("verb_")}
        print(f"  SQL, workers  : {_top(verbs)}; commits {_sum(d['worker_sql'], 'commits'):.2f},"
              f" rollbacks {_sum(d['worker_sql'], 'rollbacks'):.2f}")
    print()


def _crosscheck(results: list[dict[str, Any]]) -> None:
    rows = [(r["spec"]["label"], c) for r in results for c in r["configs"] if "pg_xact" in c]
    if not rows:
        return
    print("PostgreSQL cross-check over each configuration (warm-up, counted phase, samples, "
          "worker start/stop):")
    for label, config in rows:
        listener = sum(_sum(config[side], key) for side in ("workers_sql_total",
                                                              "client_sql_total")
                       for key in ("commits", "pings", "autocommits"))
        pg = _sum(config["pg_xact"], "commits")
        print(f"  {label}, N={config['workers']}: listener {listener:.0f} commits + pre-pings + "
              f"autocommits, "
              f"pg_stat_database xact_commit {pg:.0f} ({pg / listener if listener else 0:.3f}x);"
              f" xact_rollback {_sum(config['pg_xact'], 'rollbacks'):.0f}")
        runs = config.get("runs_total")
        if runs and "active_ms" in config["pg_xact"]:
            print(f"    active_time {config['pg_xact']['active_ms'] / runs:.2f} ms per run "
                  f"over {runs} runs, {_sum(config['pg_xact'], 'sessions'):.0f} sessions "
                  "(statement time of every session, ended ones too: CPU and waits)")
    print()


def _capacity(results: list[dict[str, Any]], models: dict[str, float] | None) -> None:
    by_label = {r["spec"]["label"]: r for r in results}
    base = by_label.get("postgresql-linear") or results[0]
    unit = median_costs(base["configs"])
    print(f"Capacity model from {base['spec']['label']} (per-run costs: median over N):")
    print(f"  worker CPU {_ms(unit.worker_cpu)} ms, client CPU {_ms(unit.client_cpu)} ms, Redis "
          f"{unit.redis_commands:.1f} commands and {_ms(unit.redis_cpu)} ms CPU, "
          f"{unit.statements:.1f} SQL statements, {unit.commits:.2f} commits, "
          f"{unit.pings:.2f} pre-pings"
          + (f", PostgreSQL backends {_ms(unit.db_cpu)} ms CPU" if unit.db_cpu else ""))
    support = by_label.get("postgresql-support")
    plans = [(f"{TICKETS_PER_DAY:,} tickets/day (average)", TICKETS_PER_DAY / 86_400, unit)]
    if support:
        per = median_costs(support["configs"])
        label = plans[0][0] + ", support shape"
        if models:
            print(f"  support models, CPU per ticket in one process: classify "
                  f"{_ms(models['classify'])} ms, urgency {_ms(models['urgency'])} ms "
                  f"({models['tickets']:.0f} shipped tickets); added to the support shape's "
                  f"worker CPU {_ms(per.worker_cpu)} ms")
            per = replace(per, worker_cpu=per.worker_cpu + models["classify"]
                          + models["urgency"])
            label += " + models"
        plans[0] = (label, TICKETS_PER_DAY / 86_400, per)
    plans += [(label, rate, unit) for label, rate in RATES]
    for label, rate, per in plans:
        cap = capacity(rate, per)
        print(f"  {label}: rate {rate:,.2f}/s")
        print(f"    worker processes = {rate:,.2f} x {_ms(per.worker_cpu)} ms = "
              f"{cap['worker_cores']:.2f} cores -> {cap['worker_processes']} at 70% busy")
        print(f"    Redis = {rate:,.2f} x {per.redis_commands:.1f} = {cap['redis_ops']:,.0f} "
              f"commands/s, {cap['redis_cores']:.2f} cores of its one thread")
        print(f"    SQL = {rate:,.2f} x {per.statements:.1f} = {cap['statements']:,.0f} "
              f"statements/s ({cap['round_trips']:,.0f} round trips with the pre-pings), "
              f"{cap['commits']:,.0f} commits/s ({cap['transactions']:,.0f} transactions)"
              + (f"; PostgreSQL = {rate:,.2f} x {_ms(per.db_cpu)} ms = {cap['db_cores']:.2f} "
                 "cores" if "db_cores" in cap and per.db_cpu is not None else ""))
    for name, (rate, cpus, busy) in (("Hatchet", HATCHET), ("DBOS", DBOS)):
        print(f"  published: {name} {rate:,.0f}/s on {cpus:.0f} CPUs at {busy:.0%} = "
              f"{_ms(db_cpu_per_run_published(rate, cpus, busy))} ms database CPU per run")
