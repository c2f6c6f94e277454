"""Our Redis transport when the broker dies under a consumer (kombu#582/#970).

Each test starts a ``redis-server`` of its own on a free port (no persistence) and
SIGKILLs it; the shared Redis is never touched. The consumer side is driven as Celery's
worker drives it on a lost connection: messages consumed and not acknowledged, the
server killed, ``Connection.collect()`` then ``close()`` (``Consumer.
on_connection_error_after_connected``), and then a pool thread that finishes its step
acknowledges its message on the closed channel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue
from kombu.transport import redis as kombu_redis

from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.worker.redis_transport import KOMBU_TRANSPORT, TRANSPORT, Transport
from tests.support.own_redis import OwnRedis, own_redis

QUEUE = Queue("transport.test", routing_key="transport.test")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path) as own:
        yield own


def _consume_unacked(connection: Connection, count: int) -> list[Any]:
    """Publish ``count`` messages and receive them without acknowledging them."""
    with connection.Producer() as producer:
        for n in range(count):
            producer.publish({"n": n}, routing_key=QUEUE.routing_key, declare=[QUEUE])
    received: list[Any] = []
    consumer = connection.Consumer([QUEUE], accept=["json"],
                                   callbacks=[lambda _body, message: received.append(message)])
    consumer.consume()
    deadline = time.monotonic() + 10
    while len(received) < count and time.monotonic() < deadline:
        connection.drain_events(timeout=1)
    assert len(received) == count
    return received


def _lose_broker(connection: Connection, server: OwnRedis) -> None:
    """The broker dies; the consumer cleans up as Celery's does on a lost connection."""
    server.kill()
    connection.collect(socket_timeout=5)
    connection.close()


def test_an_orchestrator_on_a_redis_broker_uses_our_transport(tmp_path: Path) -> None:
    orchestrator = Orchestrator(Settings(broker_url="redis://127.0.0.1:1/0",
                                         database_url=f"sqlite:///{tmp_path / 'r.db'}"),
                                name="transport-test")
    connection = orchestrator.celery.connection_for_write()
    assert type(connection.transport) is Transport
    assert issubclass(Transport, kombu_redis.Transport)
    # The URL still says redis:// (logs, Flower's broker view parse it).
    assert connection.as_uri().startswith("redis://")


def test_a_channel_closed_while_the_broker_is_down_is_closed_whole(server: OwnRedis) -> None:
    connection = Connection(server.url, transport=TRANSPORT)
    messages = _consume_unacked(connection, 2)
    channel = messages[0].channel
    _lose_broker(connection, server)
    # kombu's own channel stays half closed here: restoring its unacknowledged messages
    # raised, so it was never detached from its connection.
    assert channel.connection is None
    assert not channel.qos._delivered


def test_an_ack_after_the_connection_closed_is_a_connection_error(server: OwnRedis) -> None:
    connection = Connection(server.url, transport=TRANSPORT)
    errors = connection.connection_errors
    messages = _consume_unacked(connection, 2)
    channel = messages[0].channel
    _lose_broker(connection, server)
    # The pools of the closed channel are gone too (as after a second close, or a fork):
    # kombu would rebuild one from the closed connection: AttributeError(... 'hostname'),
    # which no Celery error handler expects, and a threads worker exits.
    channel._disconnect_pools()
    for message in messages:
        with pytest.raises(errors):
            message.ack()
    with pytest.raises(errors):
        channel.qos.restore_visible()
    channel.qos.restore_unacked()  # logged, not raised


def test_kombus_own_transport_fails_the_same_sequence(server: OwnRedis) -> None:
    """The defect the subclass works around, on kombu's transport (if kombu fixes it,
    this test says the workaround can go)."""
    connection = Connection(server.url, transport=KOMBU_TRANSPORT)
    messages = _consume_unacked(connection, 1)
    channel = messages[0].channel
    _lose_broker(connection, server)
    assert channel.connection is not None  # half closed
    channel._disconnect_pools()
    with pytest.raises(AttributeError, match="hostname"):
        messages[0].ack()
