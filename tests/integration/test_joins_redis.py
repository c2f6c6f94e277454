"""The join state of forks in a real Redis (store/joins.py ``RedisJoins``).

The Lua script keeps each branch's first envelope, tells every arrival that finds the
join complete (a redelivered arrival must continue the run), shortens the hash's life
once complete, and a Redis that cannot be reached is reported as such, not as an empty
join.
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from orchestration.core.keys import join as join_key
from orchestration.store.joins import JoinsUnavailable, RedisJoins

pytestmark = [pytest.mark.redis]


@pytest.fixture
def client() -> redis.Redis:
    # The session's Redis DB (tests/integration/conftest.py sets it; importing the
    # conftest as a module would run it again, with a session of its own).
    return redis.Redis.from_url(os.environ["ORCH_REDIS_URL"], decode_responses=True)


def test_a_join_completes_with_every_branch_in_order_and_tells_each_later_arrival(
        client: redis.Redis) -> None:
    joins = RedisJoins(client, ttl=3600, settle=60)
    join_id = uuid.uuid4().hex
    first = {"run": "r", "out": {"b": {"secret": "kept whole"}}}
    assert joins.arrive(join_id, 1, 3, first) is None
    assert joins.arrive(join_id, 1, 3, {"run": "r", "out": {"b": "redacted"}}) is None
    assert 3000 < client.ttl(join_key(join_id)) <= 3600  # incomplete: the long life
    assert joins.arrive(join_id, 0, 3, {"run": "r", "out": {"a": 1}}) is None
    parts = joins.arrive(join_id, 2, 3, {"run": "r", "out": {"c": [1, 2]}})
    assert parts == [{"run": "r", "out": {"a": 1}}, first, {"run": "r", "out": {"c": [1, 2]}}]
    assert 0 < client.ttl(join_key(join_id)) <= 60  # complete: kept past a redelivery only
    # A branch delivered again after the join completed (its worker died before it could
    # continue the run) is told the join is complete, with the first envelopes.
    assert joins.arrive(join_id, 2, 3, {"run": "r", "out": {"c": "again"}}) == parts
    client.delete(join_key(join_id))


def test_an_unreachable_redis_is_an_error_not_an_incomplete_join() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5,
                       socket_timeout=0.5)
    joins = RedisJoins(dead, ttl=3600, settle=60)
    with pytest.raises(JoinsUnavailable, match="Redis unreachable"):
        joins.arrive(uuid.uuid4().hex, 0, 2, {"run": "r"})
