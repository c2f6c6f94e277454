"""kombu's Redis transport, with a broker that dies under a worker reported as a lost connection.

An orchestrator whose broker is ``redis://`` calls :func:`install` when it applies its
settings: from then on kombu resolves ``redis://`` URLs in the process to
:class:`Transport` (kombu's transport alias ``redis`` points here), so URLs, log lines and
Flower's broker view still say ``redis://``. ``rediss://`` and ``sentinel://`` keep kombu's
own. It changes two things of :mod:`kombu.transport.redis` (upstream celery/kombu#582,
#970), and nothing else:

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

import kombu.transport
import structlog
from kombu.transport import redis as kombu_redis
from redis import exceptions as redis_errors

log = structlog.get_logger("orchestration.worker.redis_transport")

#: Where kombu finds this transport.
TRANSPORT = "orchestration.worker.redis_transport:Transport"
KOMBU_TRANSPORT = "kombu.transport.redis:Transport"


def install() -> None:
    """Resolve ``redis://`` to :class:`Transport` in this process (idempotent).

    Connections opened before keep the transport they have.
    """
    kombu.transport.TRANSPORT_ALIASES["redis"] = TRANSPORT
    # kombu caches resolved aliases: drop a 'redis' resolved before this call.
    kombu.transport._transport_cache.pop("redis", None)


def uninstall() -> None:
    """Give ``redis://`` back to kombu's own transport (tests)."""
    kombu.transport.TRANSPORT_ALIASES["redis"] = KOMBU_TRANSPORT
    kombu.transport._transport_cache.pop("redis", None)


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
