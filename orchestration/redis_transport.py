"""kombu's Redis transport, with a broker that dies under a worker reported as a lost connection.

Celery uses this transport for ``redis://`` brokers (``config/celery.py`` sets
``broker_transport`` to :data:`TRANSPORT`). It changes two things of
:mod:`kombu.transport.redis` (upstream celery/kombu#582, #970), and nothing else:

- A channel builds its Redis connection pool lazily from ``self.connection.client``.
  When the broker dies, Celery closes the kombu connection: the transport's ``client`` is
  set to ``None`` (and ``close_channel`` sets the channel's ``connection`` to ``None``),
  and the channel's pools are dropped. Anything that touches such a channel afterwards
  -- the ack of a step a pool thread finishes during the outage, the restore of its
  unacknowledged messages when its QoS is collected -- rebuilds the pool from
  ``None.hostname`` and raises ``AttributeError``. That is no connection error, so
  Celery does not reconnect: a threads worker exits ("Unrecoverable error:
  AttributeError(... 'hostname')"). Here it raises ``redis.ConnectionError``, one of
  the transport's ``connection_errors``, which Celery logs and recovers from.
- Restoring the unacknowledged messages of a closing channel raises while Redis is
  down, which leaves the channel half closed (never removed from its transport). Here
  the failure is logged and the close completes: the messages stay in Redis's
  ``unacked`` hash and are re-delivered after the visibility timeout if the server kept
  them; a server restarted empty lost them, and the reconciler re-dispatches their runs.
"""

from __future__ import annotations

from typing import Any

import structlog
from kombu.transport import redis as kombu_redis
from redis import exceptions as redis_errors

log = structlog.get_logger("orchestration.redis_transport")

#: The ``broker_transport`` value that selects this transport.
TRANSPORT = "orchestration.redis_transport:Transport"


class QoS(kombu_redis.QoS):
    """Redis ack emulation whose restore of unacknowledged messages survives a dead broker."""

    def restore_unacked(self, client: Any = None) -> None:
        """Put this channel's unacknowledged messages back; log (not raise) if Redis is gone."""
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except redis_errors.ConnectionError as exc:
            held = len(self._delivered)
            # Forget them here: they are still in Redis's unacked hash (restored after
            # the visibility timeout), or gone with a server that restarted empty.
            self._delivered.clear()
            log.warning("broker unreachable: unacknowledged messages left for the "
                        "visibility timeout", messages=held, error=str(exc))


class Channel(kombu_redis.Channel):
    """A Redis channel that reports use after its connection closed as a connection error."""

    QoS = QoS

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis_errors.ConnectionError(
                "the broker connection of this channel was closed (broker lost)")
        params: dict[str, Any] = super()._connparams(  # type: ignore[no-untyped-call]
            asynchronous=asynchronous)
        return params


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
