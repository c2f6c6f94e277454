"""Events per second from ``POST /events/<name>`` to a recorded run, beside plain ``submit``.

A real ``orchestrate serve`` process (uvicorn) on a loopback port takes HMAC-signed
deliveries, each a new event id that its trigger turns into a run; the same workflow is
submitted directly from this process, with the same number of client threads, against
the same results database and broker. Rounds alternate (submit, webhook, submit, ...) so
load on the machine spreads over both; the report prints each rate's median and the
ratio webhook/submit. A run counts when its row is written and its message published:
no worker consumes the queue (``bench/webhook_workflows.py``), and every run is checked
to be in the database at the end.

    .venv/bin/python bench/webhooks.py [--events 1000] [--concurrency 8] [--rounds 3]
        [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--broker redis://127.0.0.1:6379/12]

The database is a fresh PostgreSQL database created on the server of ``--admin-url`` and
dropped at the end; of the broker's Redis DB only the bench's queue keys are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from orchestration import default_orchestrator  # noqa: E402

SECRET = "bench-webhook-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of the bench's own (its URL), dropped at the end."""
    name = f"orch_bench_webhooks_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[str]:
    """``orchestrate serve`` on a free loopback port; its base URL."""
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from orchestration.cli import main; main()", "serve",
             "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"orchestrate serve exited:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("orchestrate serve did not answer within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _rate(count: int, concurrency: int, one: Callable[[int], None]) -> float:
    """Calls per second of ``one(i)`` for i < count, over ``concurrency`` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started)


_local = threading.local()


def _client() -> httpx.Client:
    """This thread's HTTP client (kept alive across deliveries, as a sender would)."""
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = httpx.Client(timeout=60)
    return client


def webhook_rate(url: str, event: str, count: int, concurrency: int) -> float:
    """Deliveries per second, each a new event id that must come back ``started``."""

    def deliver(index: int) -> None:
        body = json.dumps({"ticket": {"id": index, "description": "cannot log in"}}).encode()
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        response = _client().post(f"{url}/events/{event}", content=body, headers={
            "X-Orchestrate-Signature": f"sha256={digest}", "X-Event-Id": str(uuid.uuid4()),
            "Content-Type": "application/json"})
        if response.status_code != 202 or \
                response.json()["outcomes"][0]["outcome"] != "started":
            raise SystemExit(f"delivery refused: {response.status_code} {response.text}")

    return _rate(count, concurrency, deliver)


def submit_rate(workflow: Any, count: int, concurrency: int) -> float:
    """Plain ``workflow.submit`` calls per second, from this process."""

    def submit(index: int) -> None:
        workflow.submit(ticket_id=index, text="cannot log in")

    return _rate(count, concurrency, submit)


def measure_webhooks(args: argparse.Namespace) -> dict[str, list[float]]:
    """Rates per round: ``submit`` and ``webhook`` (events per second to a recorded run)."""
    with fresh_database(args.admin_url) as database, \
            tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        env = {key: value for key, value in os.environ.items()
               if key not in ("ORCH_SERVE_TOKEN", "ORCH_RESULT_BACKEND")}
        env.update({"ORCH_DATABASE_URL": database, "ORCH_BROKER_URL": args.broker,
                    "ORCH_RESULT_BACKEND": args.broker, "ORCH_DEPLOYMENT": "",
                    "ORCH_IMPORTS": "bench.webhook_workflows", "ORCH_WEBHOOK_SECRET": SECRET,
                    "ORCH_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
        os.environ.update(env)  # this process's default orchestrator: the same deployment
        # Imported once the environment names the deployment: it declares the workflow.
        from bench.webhook_workflows import EVENT, QUEUE, ticket

        store = default_orchestrator().store
        rates: dict[str, list[float]] = {"submit": [], "webhook": []}
        try:
            with served(env, Path(tmp) / "serve.log") as url:
                webhook_rate(url, EVENT, min(50, args.events), args.concurrency)  # warm up
                submit_rate(ticket, min(50, args.events), args.concurrency)
                for _ in range(args.rounds):
                    rates["submit"].append(submit_rate(ticket, args.events, args.concurrency))
                    rates["webhook"].append(webhook_rate(url, EVENT, args.events,
                                                         args.concurrency))
            expected = 2 * min(50, args.events) + 2 * args.rounds * args.events
            recorded = len(store.list_runs(workflow=ticket.name, limit=expected + 10))
            if recorded != expected:
                raise SystemExit(f"{recorded} runs recorded, expected {expected}")
            events = store.events.count(name=EVENT, outcome="started")
            if events != min(50, args.events) + args.rounds * args.events:
                raise SystemExit(f"{events} started events recorded")
        finally:
            default_orchestrator().shutdown()
            _drop_queue(args.broker, QUEUE)
        return rates


def _drop_queue(broker: str, queue: str) -> None:
    client = redis.Redis.from_url(broker)
    try:
        for key in client.scan_iter(f"{queue}*"):
            client.delete(key)
    finally:
        client.close()


def report(args: argparse.Namespace, rates: dict[str, list[float]]) -> None:
    """Median rates and the ratio webhook/submit."""
    submit, webhook = (statistics.median(rates[k]) for k in ("submit", "webhook"))
    print(f"{args.events} runs per round, {args.rounds} rounds, {args.concurrency} client "
          f"threads, load average {os.getloadavg()[0]:.2f}")
    print(f"{'path':<38}{'median /s':>10}   rounds")
    for label, key in (("submit (this process)", "submit"),
                       ("POST /events -> recorded run", "webhook")):
        rounds = ", ".join(f"{rate:.0f}" for rate in rates[key])
        print(f"{label:<38}{statistics.median(rates[key]):>10.0f}   {rounds}")
    print(f"ratio webhook/submit: {webhook / submit:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="runs per round and path")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--admin-url", default=os.environ.get(
        "ORCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    args = parse_args(argv)
    report(args, measure_webhooks(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
