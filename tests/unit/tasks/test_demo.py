"""The demo (``make demo``): its seeded fault schedule, the figures it reads back from the
results database, and whole runs in a subprocess on the embedded default (no servers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tasks.demo.catalogue import FALLBACK, PRIMARY, demo_catalogue
from tasks.demo.faults import FaultSchedule, SimulatedProvider, ticket_text
from tasks.demo.figures import Call, Figures, breaker_events, collect
from tasks.demo.summary import lines

ROOT = Path(__file__).resolve().parents[3]
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


# -- the fault schedule -----------------------------------------------------------------------

def test_the_schedule_decides_by_ticket_model_and_try_whatever_the_order() -> None:
    schedule = FaultSchedule()
    keys = [f"ticket-{i}" for i in range(300)]
    forward = [schedule.decide(PRIMARY, k, i, 300, 1) for i, k in enumerate(keys)]
    backward = [schedule.decide(PRIMARY, k, i, 300, 1)
                for i, k in reversed(list(enumerate(keys)))][::-1]
    assert forward == backward
    assert [FaultSchedule(seed=2).decide(PRIMARY, k, None, 0, 1) for k in keys] != \
        [schedule.decide(PRIMARY, k, None, 0, 1) for k in keys]  # another seed, other faults
    statuses = [status for status, _ in forward]
    assert [statuses[i] for i in sorted(schedule.rejected(300))] == [400, 400, 400]
    elsewhere = [statuses[i] for i in range(300) if i not in schedule.rejected(300)]
    assert any(s >= 500 for s in elsewhere) and elsewhere.count(200) > 0.8 * len(elsewhere)


def test_outages_and_slow_answers_follow_the_models_request_count_not_the_ticket() -> None:
    schedule = FaultSchedule()
    # Down: every request that is not rejected gets a 503, whatever its ticket.
    assert {schedule.decide(PRIMARY, f"t{i}", i, 300, 1, down=True)[0]
            for i in range(300) if i not in schedule.rejected(300)} == {503}
    assert schedule.outage_begins(PRIMARY, 300) == 120
    assert schedule.outage_begins(FALLBACK, 300) is None
    # Slow: the 40th, 60th, 80th... request, never one of the first 39 (the adaptive
    # timeout needs 20 latencies first), whichever ticket it is about.
    every = schedule.slow_every[PRIMARY]
    assert [n for n in range(1, 101) if schedule.slow(PRIMARY, n)] == [40, 60, 80, 100]
    calm = next(i for i in range(300) if schedule.decide(PRIMARY, f"t{i}", i, 300, 1)[0] == 200
                and i not in schedule.rejected(300))
    assert schedule.decide(PRIMARY, f"t{calm}", calm, 300, 1, served=2 * every) == \
        (200, schedule.slow_s)
    assert schedule.decide(PRIMARY, f"t{calm}", calm, 300, 1, served=2 * every + 1)[1] < 1
    assert not schedule.slow(FALLBACK, 2 * every)


def test_the_provider_is_down_for_outage_s_from_the_request_that_begins_it() -> None:
    schedule = FaultSchedule(error_rate={}, slow_every={}, reject_at=(), outage_start=0.5,
                             outage_s=1.0)
    tickets = [f"ticket {i}" for i in range(4)]
    with SimulatedProvider(schedule, tickets) as provider:
        def ask(i: int) -> int:
            return provider.answer({"model": PRIMARY, "messages": [
                {"role": "user", "content": f"Reply.\n\nTicket: ticket {i}"}]})[0]

        assert ask(0) == 200  # request 1 of 4: before the outage
        assert ask(3) == 503  # request 2 (0.5 x 4) begins it
        assert ask(0) == 503  # the ticket does not matter while it lasts
        deadline = time.monotonic() + 5
        while ask(1) == 503:  # it ends 1 s after it began, on the provider's clock
            assert time.monotonic() < deadline, "the outage never ended"
        assert ask(3) == 200 and ask(0) == 200  # the ticket that began it is not down again


def test_a_retry_of_the_same_ticket_draws_again() -> None:
    schedule = FaultSchedule()
    failing = next(k for k in (f"t{i}" for i in range(1000))
                   if schedule.decide(PRIMARY, k, None, 0, 1)[0] >= 500)
    assert [schedule.decide(PRIMARY, failing, None, 0, n)[0] for n in (2, 3, 4)] != [500] * 3


def test_the_calm_schedule_injects_nothing() -> None:
    calm = FaultSchedule.calm()
    assert not calm.injects and FaultSchedule().injects
    assert {calm.decide(model, f"t{i}", i, 100, 1)[0] for model in (PRIMARY, FALLBACK)
            for i in range(100)} == {200}


def test_the_simulated_provider_answers_openai_requests_and_labels_them() -> None:
    tickets = ["first ticket", "second ticket"]
    schedule = FaultSchedule(error_rate={}, slow_every={}, reject_at=(0.5,),
                             outage_model=None)
    with SimulatedProvider(schedule, tickets) as server:
        def post(text: str) -> tuple[int, dict[str, object]]:
            body = json.dumps({"model": PRIMARY, "messages": [
                {"role": "user", "content": f"Write a reply.\n\nTicket: {text}"}]}).encode()
            request = urllib.request.Request(f"{server.url}/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, answer = post("first ticket")
        assert status == 200
        assert str(answer["choices"][0]["message"]["content"]).startswith(  # type: ignore[index]
            f"[demo: simulated {PRIMARY}]")
        assert post("second ticket")[0] == 400
    assert server.stats[PRIMARY] == {"200": 1, "400": 1}
    assert ticket_text("Reply.\n\nTicket: it broke") == "it broke"


def test_the_demo_catalogue_serves_the_reply_models_from_the_simulated_provider() -> None:
    catalogue = demo_catalogue("http://127.0.0.1:1/v1")
    assert catalogue["providers"]["demo"] == {"kind": "openai",
                                              "base_url": "http://127.0.0.1:1/v1"}
    assert catalogue["models"][PRIMARY]["fallbacks"] == [FALLBACK]
    assert catalogue["models"][FALLBACK]["fallbacks"] == []
    assert catalogue["models"][PRIMARY]["input_cost_per_1k"] > 0  # the shipped prices


# -- breaker transitions rebuilt from the call trace -------------------------------------------

def _call(at: float, ok: bool, breaker: str, *, refused: bool = False,
          latency: float = 0.05) -> Call:
    return Call(model=PRIMARY, ok=ok, breaker=breaker, error_kind=None if ok else
                "model_unavailable", error="" if ok else "HTTP 503", refused=refused,
                start=at, end=at + latency, latency_ms=latency * 1000, run_id="r",
                first_model=PRIMARY)


def test_breaker_events_open_probe_and_close() -> None:
    calls = [
        _call(0.0, True, "closed"),
        _call(1.0, False, "closed"),
        _call(1.1, False, "open"),  # the failure that opened it
        _call(1.05, False, "open", latency=0.2),  # in flight before it opened: no probe
        _call(1.3, False, "open", refused=True, latency=0.0),  # refused: no request
        _call(1.7, False, "open"),  # a probe that failed
        _call(2.3, True, "closed"),  # a probe that closed it
        _call(2.5, True, "closed"),
    ]
    events = breaker_events(calls)
    assert [(e.kind, round(e.at, 2)) for e in events] == [
        ("opened", 1.15), ("probe_failed", 1.75), ("closed", 2.35)]


# -- whole demo runs --------------------------------------------------------------------------

def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Figures]:
    database = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATABASE_URL=f"sqlite:///{database}", ORCH_DEPLOYMENT="config",
               PYTHONPATH=str(ROOT), COLUMNS="160")
    done = subprocess.run([sys.executable, "-m", "tasks.demo", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    engine = create_engine(f"sqlite:///{database}")
    try:
        return done, collect(engine, "support_ticket", EPOCH)
    finally:
        engine.dispose()


def test_the_demo_under_faults_retries_falls_back_and_its_breaker_opens_and_recovers(
        tmp_path: Path) -> None:
    # 200 tickets: gpt-4o-mini answers slowly to its 40th and 60th requests, once the adaptive
    # timeout knows 20 latencies, and is down for 0.8 s from its 80th, with more than half of
    # the batch still to come: seconds at this machine's speed (a busier machine only makes
    # it longer), so a probe after the outage closes the breaker again.
    done, figures = _demo(tmp_path, "--tickets", "200")
    assert done.returncode == 0, done.stdout + done.stderr
    assert figures.runs == 200 and figures.by_status == {"succeeded": 200}
    assert figures.call_retries > 0 and sum(figures.step_retries.values()) > 0
    assert figures.fallback_models > 0
    assert figures.step_fallbacks == {"generate_response": 3}  # the three rejected tickets
    assert figures.models[PRIMARY].timeouts > 0 and figures.models[PRIMARY].refused > 0
    # Once 20 latencies are known the adaptive timeout is 2 x p99 (its 0.5 s floor unless the
    # machine is very busy), below the 2 s ceiling that applies before: slow answers are cut
    # early.
    assert min(figures.models[PRIMARY].timeout_after_ms) < 1500
    assert figures.openings(PRIMARY) and figures.recoveries(PRIMARY)
    assert figures.openings(PRIMARY)[0].at < figures.recoveries(PRIMARY)[-1].at
    assert figures.cost_total > 0
    for line in lines(figures, "support_ticket"):  # the summary printed is what the DB says
        assert line in done.stdout
    assert "orchestrate serve" in done.stdout and "/runs?workflow=support_ticket" in done.stdout
    assert f"breaker {PRIMARY}: opened at" in done.stdout


def test_the_calm_demo_has_nothing_to_handle(tmp_path: Path) -> None:
    done, figures = _demo(tmp_path, "--tickets", "12", "--no-faults")
    assert done.returncode == 0, done.stdout + done.stderr
    assert figures.by_status == {"succeeded": 12}
    # Nothing injected: no 5xx or 4xx, no step fallback. (A timeout is possible on a machine
    # busy enough to hold a 20-70 ms answer past the 0.5 s floor, so none is asserted.)
    calls = figures.models[PRIMARY]
    assert calls.ok > 0 and calls.unavailable == calls.rejected == 0
    assert FALLBACK not in figures.models or figures.models[FALLBACK].unavailable == 0
    assert not figures.step_fallbacks
    assert "faults: none" in done.stdout


def test_the_demo_refuses_a_ticket_count_below_one() -> None:
    from tasks.demo.run import main

    with pytest.raises(SystemExit) as raised:
        main(["--tickets", "0"])
    assert raised.value.code == 2
