"""A run's priority: one meaning in the API, mapped to what each broker understands.

The API: an int from 0 to 9, **9 the most urgent**, 0 (the default) a normal run. Every
message of a run carries it, so a run submitted with a higher priority overtakes waiting
messages of lower ones on the queues it shares with them.

The brokers disagree on the direction:

- RabbitMQ delivers a queue's higher ``priority`` first (queues declared with
  ``x-max-priority``): the engine's number is sent as is.
- kombu's Redis transport keeps one list per priority step (``queue``, ``queue:1`` ...
  ``queue:9``) and pops them in ascending order: **0 is the most urgent there**. The
  engine sends ``9 - priority``.
- The embedded default's in-memory transport has one list per queue: it ignores priority.
"""

from __future__ import annotations

from orchestration.errors import InvalidInput

LOWEST = 0
HIGHEST = 9
DEFAULT = LOWEST
#: Redis URL schemes whose transport pops lower numbers first.
_REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://")


def check_priority(value: object, where: str) -> int:
    """``value`` as a priority, or :class:`InvalidInput` naming it (``None`` is the default)."""
    if value is None:
        return DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not LOWEST <= value <= HIGHEST:
        raise InvalidInput(f"{where}: priority must be an int from {LOWEST} to {HIGHEST} "
                           f"({HIGHEST} the most urgent), got {value!r:.80}")
    return value


def message_priority(priority: int, broker_url: str) -> int:
    """The ``priority`` property a message of a run with this priority is published with."""
    if broker_url.startswith(_REDIS_SCHEMES):
        return HIGHEST - priority
    return priority
