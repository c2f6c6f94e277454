"""The engine over RabbitMQ: workers and submitter on an ``amqp://`` broker.

The result backend (chord bookkeeping) and the call counters stay on the session's Redis
DB; runs are read back from the session's PostgreSQL database. Runs are submitted by a
subprocess whose ``ORCH_BROKER_URL`` is the RabbitMQ one (the test process's own
orchestrator stays on Redis).

- On the machine's RabbitMQ (127.0.0.1:5672), inside a virtual host of the test's own
  (deleted at the end, with every queue in it): a 4-step chain over two queues, a
  fan-out + join, and a pool process SIGKILLed mid-step.
- On a RabbitMQ node of the test's own (its own node name, ports, data directory): the
  broker restarts while a batch of runs is in flight, and every run still completes.

Without the machine's RabbitMQ (``ORCH_TEST_AMQP_HOST``, default 127.0.0.1:5672) the tests
skip, or fail loudly when ``CI`` is set; so does the node of our own, with the reason, if
it is not installed or does not accept connections within 30 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import amqp
import pytest
import redis

from orchestration import RunHandle, RunResult, RunStatus, StepStatus, default_orchestrator
from tests.integration.support.helpers import statuses, wait_until
from tests.integration.support.workflows import rabbitmq as rw
from tests.integration.support.workflows.common import calls
from tests.support.processes import ROOT, child_env, free_port
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

SYSTEM_HOST = os.environ.get("ORCH_TEST_AMQP_HOST", "127.0.0.1:5672")  # the machine's broker
GUEST = ("guest", "guest")
CTL_TIMEOUT_S = 30.0
NODE_BOOT_TIMEOUT_S = 30.0
BATCH = 40


def _amqp_reachable(host: str, vhost: str = "/", timeout: float = 2.0) -> Exception | None:
    """None if an AMQP connection opens (as guest), else the error."""
    connection = amqp.Connection(host=host, userid=GUEST[0], password=GUEST[1],
                                 virtual_host=vhost, connect_timeout=timeout)
    try:
        connection.connect()
    except Exception as exc:
        return exc
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return None


def _own_ctl_binary() -> str | None:
    # The packaged script, not the /usr/sbin wrapper: as root the wrapper su's to the
    # rabbitmq user, which would not see a node of ours (nor its cookie).
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
    return str(direct) if direct.exists() else None


def _env(broker_url: str) -> dict[str, str]:
    """Worker/submitter environment: RabbitMQ broker, the session's Redis and database."""
    session_redis = os.environ["ORCH_REDIS_URL"]  # the session's leased DB (conftest)
    return child_env(ORCH_BROKER_URL=broker_url, ORCH_RESULT_BACKEND=session_redis,
                     ORCH_REDIS_URL=session_redis, ORCH_IMPORTS=rw.__name__)


_SUBMIT = """
import json, sys
from tests.integration.support.workflows import rabbitmq as rw
print(json.dumps([getattr(rw, name).submit(**inputs).run_id
                  for name, inputs in json.loads(sys.argv[1])]))
"""


def submit(env: dict[str, str], runs: list[tuple[str, dict[str, object]]]) -> list[str]:
    """Submit runs from a process whose broker is RabbitMQ; returns their ids."""
    done = subprocess.run([sys.executable, "-c", _SUBMIT, json.dumps(runs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_run(run_id: str, timeout: float = 30.0) -> RunResult:
    return RunHandle(run_id, default_orchestrator().store).wait(timeout=timeout)


def _assert_each_step_recorded_once(result: RunResult) -> None:
    """One terminal outcome per step, from exactly one recorded (successful) attempt."""
    for name, step in result.steps.items():
        assert step.status is StepStatus.SUCCEEDED, (name, statuses(result))
        assert step.attempts == 1, (name, step.attempts)
        assert [a["status"] for a in step.attempt_log] == ["succeeded"], (name, step.attempt_log)


# -- the machine's RabbitMQ, in a virtual host of our own -----------------------------------------


@dataclass
class Rabbit:
    """A RabbitMQ broker URL and the environment of processes that use it."""

    url: str
    env: dict[str, str]
    worker: Worker | None = None


def _unavailable(message: str) -> None:
    """Skip, or fail loudly when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test needs RabbitMQ. {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def rabbit_vhost(redis_service: redis.Redis) -> Iterator[str]:
    """A virtual host of this session on the machine's RabbitMQ, deleted at the end."""
    error = _amqp_reachable(SYSTEM_HOST)
    if error is not None:
        _unavailable(f"RabbitMQ is not reachable at amqp://{SYSTEM_HOST}: {error!r}")
    ctl = shutil.which("rabbitmqctl")  # the packaged wrapper finds the machine's node
    if ctl is None:
        _unavailable("rabbitmqctl is not installed: cannot create a virtual host of our own")
        return
    vhost = f"orch_it_{uuid.uuid4().hex[:10]}"
    for command in (["add_vhost", vhost],
                    ["set_permissions", "-p", vhost, GUEST[0], ".*", ".*", ".*"]):
        done = subprocess.run([ctl, *command], capture_output=True, text=True,
                              timeout=CTL_TIMEOUT_S, check=False)
        if done.returncode != 0:
            _unavailable(f"could not create a virtual host with rabbitmqctl {command[0]}: "
                         f"{(done.stderr or done.stdout)[-500:]}")
    try:
        yield vhost
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True,
                       timeout=CTL_TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def rabbit(workers: Workers, worker_logs: Path, rabbit_vhost: str) -> Iterator[Rabbit]:
    """One prefork worker (2 processes) on the RabbitMQ queues of our virtual host."""
    url = f"amqp://{GUEST[0]}:{GUEST[1]}@{SYSTEM_HOST}/{rabbit_vhost}"
    env = _env(url)
    pool = Workers(worker_logs, env=env)
    try:
        worker = pool.start("it-rmq", [rw.RMQ_QUEUE, rw.RMQ_OTHER_QUEUE], pool="prefork",
                            concurrency=2)
        assert f"Connected to amqp://guest:**@{SYSTEM_HOST}/{rabbit_vhost}" in \
            worker.log_path.read_text(errors="replace")
        yield Rabbit(url, env, worker)
    finally:
        pool.stop_all()


def test_chain_and_fanout_join_over_rabbitmq(rabbit: Rabbit) -> None:
    chain_id, fanout_id = submit(rabbit.env, [("chain4", {"n": 4}), ("fanout", {"base": 100})])

    chained = wait_run(chain_id)
    fanned = wait_run(fanout_id)

    assert chained.status is RunStatus.SUCCEEDED, (chained.error, statuses(chained))
    assert chained.outputs == {"ingest": 4, "enrich": 40, "rank": 41, "publish": "published 41"}
    assert [step.queue for step in chained.steps.values()] == [
        rw.RMQ_QUEUE, rw.RMQ_OTHER_QUEUE, rw.RMQ_QUEUE, rw.RMQ_OTHER_QUEUE]
    assert fanned.status is RunStatus.SUCCEEDED, (fanned.error, statuses(fanned))
    assert fanned.outputs["gather"] == sum(100 + i for i in range(rw.FANOUT_WIDTH))
    assert rabbit.worker is not None
    for result in (chained, fanned):
        _assert_each_step_recorded_once(result)
        for name, step in result.steps.items():
            assert calls(result.run_id, name) == 1, name
            assert step.deliveries == 1, name
            assert step.worker == rabbit.worker.nodename  # consumed from RabbitMQ


def _pids(client: redis.Redis, run_id: str) -> list[int]:
    return [int(pid) for pid in client.lrange(rw.pid_key(run_id), 0, -1)]


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_killed_pool_process_mid_step_is_redelivered_over_rabbitmq(
    rabbit: Rabbit, redis_service: redis.Redis,
) -> None:
    (run_id,) = submit(rabbit.env, [("crash", {"text": "abc"})])
    assert rabbit.worker is not None
    try:
        (pid,) = wait_until(lambda: _pids(redis_service, run_id), timeout=20,
                            what="hold to start")
        # Only ever kill a pool process of the worker this test started.
        assert _parent_of(pid) == rabbit.worker.process.pid
        os.kill(pid, signal.SIGKILL)
        # RabbitMQ gives a rejected (worker lost) message back at once; an unacknowledged
        # one would wait for the worker's connection to close (it stays up) or for the
        # broker's consumer timeout (30 min): a redelivery within this wait is the reject.
        pids = wait_until(lambda: (p := _pids(redis_service, run_id)) and len(p) == 2 and p,
                          timeout=20, what="hold to be delivered again")
        assert pids[1] != pid
    finally:
        redis_service.rpush(rw.release_key(run_id), "go")
    result = wait_run(run_id)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"prepare": "ABC", "hold": "held ABC", "wrap_up": "held ABC, done"}
    _assert_each_step_recorded_once(result)
    assert calls(run_id, "prepare") == 1
    assert calls(run_id, "hold") == 2
    assert calls(run_id, "wrap_up") == 1
    hold = result.steps["hold"]
    assert hold.deliveries == 2
    assert hold.crashes == 1
    assert rabbit.worker.alive


# -- a RabbitMQ node of our own, restarted mid-batch -------------------------------------------


@dataclass
class OwnNode:
    """A RabbitMQ node this test started: its name, AMQP port and control environment."""

    name: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    ctl: str

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rabbitmqctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.ctl, "-n", self.name, *args], env=self.env,
                              capture_output=True, text=True, timeout=CTL_TIMEOUT_S,
                              check=False)

    def wait_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if _amqp_reachable(self.host, timeout=1) is None:
                return True
            time.sleep(0.2)
        return False


@pytest.fixture(scope="module")
def own_node(rabbit_vhost: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnNode]:
    """A RabbitMQ node of this test (own name, ports, data); skipped if it will not boot."""
    server = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    ctl = _own_ctl_binary()
    if not server.exists() or ctl is None:
        _unavailable("rabbitmq-server is not installed as /usr/lib/rabbitmq/bin/rabbitmq-server")
    base = tmp_path_factory.mktemp("rabbitmq-node")
    port, dist_port = free_port(), free_port()
    name = f"orchtest{uuid.uuid4().hex[:8]}@localhost"
    (base / "enabled_plugins").write_text("[].\n")  # no management listener to collide
    (base / "rabbitmq-env.conf").write_text("")  # not the machine's NODENAME
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    env = dict(
        os.environ, HOME=str(base), RABBITMQ_NODENAME=name,
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist_port), RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
        RABBITMQ_LOG_BASE=str(base / "log"), RABBITMQ_LOGS=str(base / "log" / "node.log"),
        RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
        RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
        RABBITMQ_PID_FILE=str(base / "node.pid"), ERL_EPMD_ADDRESS="127.0.0.1",
    )
    with open(base / "console.log", "ab") as log:
        process = subprocess.Popen([str(server)], cwd=base, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    node = OwnNode(name, port, env, process, ctl)
    try:
        if not node.wait_up(NODE_BOOT_TIMEOUT_S):
            _unavailable(f"a RabbitMQ node of our own ({name}) did not accept connections "
                         f"within {NODE_BOOT_TIMEOUT_S:g} s; see {base / 'console.log'}")
        yield node
    finally:
        node.rabbitmqctl("stop")
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the node only
            process.wait()


def test_broker_restart_mid_batch_loses_no_run(
    own_node: OwnNode, worker_logs: Path,
) -> None:
    env = _env(f"amqp://{GUEST[0]}:{GUEST[1]}@{own_node.host}//")
    pool = Workers(worker_logs, env=env)
    try:
        worker = pool.start("it-rmq-own", [rw.RMQ_QUEUE, rw.RMQ_OTHER_QUEUE], pool="prefork",
                            concurrency=2)
        run_ids = submit(env, [("chain4", {"n": n}) for n in range(BATCH)])
        store = default_orchestrator().store

        def finished() -> int:
            return sum(store.run_status(run_id).is_terminal for run_id in run_ids)

        done_before = wait_until(lambda: (n := finished()) >= BATCH // 8 and n, timeout=60,
                                 what="the batch to get going")
        assert done_before < BATCH, "the batch finished before the broker restart"
        stopped = own_node.rabbitmqctl("stop_app")
        assert stopped.returncode == 0, stopped.stderr
        assert _amqp_reachable(own_node.host, timeout=1) is not None  # the broker is down
        started = own_node.rabbitmqctl("start_app")
        assert started.returncode == 0, started.stderr
        assert own_node.wait_up(NODE_BOOT_TIMEOUT_S)

        results = [wait_run(run_id, timeout=90) for run_id in run_ids]
        assert worker.alive, worker.log_tail()
    finally:
        pool.stop_all()

    failed = [(r.run_id, r.status.value, r.error, statuses(r)) for r in results
              if r.status is not RunStatus.SUCCEEDED]
    assert failed == [], failed
    for n, result in enumerate(results):
        assert result.outputs["publish"] == f"published {n * 10 + 1}"
        for name, step in result.steps.items():
            assert step.status is StepStatus.SUCCEEDED, (result.run_id, name)
            assert step.attempts >= 1
            assert calls(result.run_id, name) >= 1
    reran = {(r.run_id, name): calls(r.run_id, name) for r in results for name in r.steps
             if calls(r.run_id, name) > 1}
    print(f"broker restart after {done_before}/{BATCH} runs; steps run more than once: {reran}")
