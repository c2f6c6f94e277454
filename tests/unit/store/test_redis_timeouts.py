"""Every client of the shared Redis is bounded by ORCH_REDIS_TIMEOUT (nothing connects here).

A hung Redis must fail calls, not block them: the process-wide client (breakers, limits,
latencies, permits, run streams, PUBLISH) and the completion notices' pool carry the
setting as socket and connect timeouts, and a blocking stream read waits at most half of
it per round trip so a quiet stream is not taken for a hung server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestration import Orchestrator
from orchestration.core.settings import EMBEDDED_BROKER, Settings
from orchestration.store.completion_redis import RedisCompletions
from orchestration.store.run_stream import RedisRunStream

URL = "redis://127.0.0.1:1/0"  # never connected to by these tests


def test_the_shared_clients_carry_the_timeout(tmp_path: Path) -> None:
    app = Orchestrator(Settings(broker_url=EMBEDDED_BROKER, result_backend=None,
                                redis_url=URL, redis_timeout=2.5, imports=[],
                                database_url=f"sqlite:///{tmp_path / 'r.db'}"))
    try:
        client = app.resilience.redis
        assert client is not None
        shared = client.connection_pool.connection_kwargs
        assert (shared["socket_timeout"], shared["socket_connect_timeout"]) == (2.5, 2.5)
        completions = app.store.completions
        assert isinstance(completions, RedisCompletions)
        notices = completions._pool.connection_kwargs
        assert notices["socket_timeout"] == 2.5 and notices["socket_connect_timeout"] <= 2.5
        stream = app.run_stream
        assert isinstance(stream, RedisRunStream) and stream.max_block == 1.25
    finally:
        app.shutdown()


class _Client:
    """Records XREAD's block argument; the stream is empty."""

    def __init__(self) -> None:
        self.blocks: list[int | None] = []

    def register_script(self, script: str) -> Any:
        return None

    def xread(self, streams: dict[str, str], count: int, block: int | None) -> list[Any]:
        self.blocks.append(block)
        return []


def test_a_blocking_read_waits_at_most_max_block() -> None:
    client = _Client()
    stream = RedisRunStream(client, max_block=0.5)  # type: ignore[arg-type]
    assert stream.read("r", block=30) == []
    assert stream.read("r", block=0.2) == []
    assert stream.read("r") == []
    assert client.blocks == [500, 200, None]
    unbounded = RedisRunStream(client)  # type: ignore[arg-type]
    unbounded.read("r", block=30)
    assert client.blocks[-1] == 30_000


def test_the_shared_clients_parse_replies_in_c(tmp_path: Path) -> None:
    """hiredis (a dependency) is what the engine's Redis clients parse replies with: the
    pure-Python parser cost a fifth of a one-call run's CPU on a threads worker."""
    from redis._parsers import _HiredisParser
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE
    app = Orchestrator(Settings(broker_url=EMBEDDED_BROKER, result_backend=None,
                                redis_url=URL, imports=[],
                                database_url=f"sqlite:///{tmp_path / 'r.db'}"))
    try:
        client = app.resilience.redis
        assert client is not None
        connection = client.connection_pool.make_connection()
        assert isinstance(getattr(connection, "_parser", None), _HiredisParser)  # not connected
    finally:
        app.shutdown()
