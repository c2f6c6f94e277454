"""Run completion notices over Redis pub/sub, between processes.

A run's end is PUBLISHed on ``orchestration:run-done:<run_id>`` (the message is the run's
status, nothing else) after the commit that ended it. Waiters of one process share one
pub/sub connection read by one listener thread, which routes each message to the
waiters of its run, as Celery's Redis result backend does (``ResultConsumer``): a wait
costs a SUBSCRIBE and an UNSUBSCRIBE on that connection, not a connection.

A watch waits for the server's SUBSCRIBE confirmation before the waiter's first status
read, so a run that ends after that read is announced to it. A notice can still be lost
(a publish that failed, a dropped connection): waiters re-read the DB at a slow interval
meanwhile. With the listener unable to reach Redis, watches are not live and waiters poll.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
import structlog

from orchestration.core.completion import LocalCompletions, Watch
from orchestration.core.keys import run_done

__all__ = ["RedisCompletions"]

log = structlog.get_logger("orchestration.store.completion")

CONFIRM_TIMEOUT = 1.0  # how long a watch waits for its SUBSCRIBE to be confirmed
IDLE_READ = 5.0  # the listener's longest blocking read (it notices a fork or a stop)
RETRY_AFTER = 1.0  # after a failed connect, watches poll this long before trying again
_PREFIX = run_done("")
_ERRORS = (redis.RedisError, OSError, ValueError)


class RedisCompletions(LocalCompletions):
    """Notices through Redis pub/sub; this process's own notices also wake locally."""

    def __init__(self, url: str, publisher: redis.Redis | None = None, *,
                 timeout: float = 10.0) -> None:
        super().__init__(complete=False)
        # RESP2: subscription messages are plain replies (RESP3 pushes them out of band).
        # ``timeout`` bounds every command (PUBLISH on this pool when no publisher is
        # given): a hung Redis fails the notice, it does not hang a run's finalisation. The
        # listener's idle wait is ``can_read(IDLE_READ)``, which sets its own timeout.
        self._pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=min(1.0, timeout),
                                                   socket_timeout=timeout,
                                                   health_check_interval=0, protocol=2)
        self._publisher = publisher if publisher is not None else redis.Redis(
            connection_pool=self._pool)
        self._send_lock = threading.Lock()  # one writer on the pub/sub connection
        self._conn: Any = None  # a redis-py Connection (its methods are untyped)
        self._connected = threading.Event()  # set while there is a connection to read
        self._confirmed: dict[str, threading.Event] = {}
        self._listener: threading.Thread | None = None
        self._pid = 0
        self._down_until = 0.0
        self._stopped = False
        self.published = 0  # notices this process sent (for tests and benches)

    # -- sending -----------------------------------------------------------------------

    def notify(self, run_id: str, status: str) -> None:
        """Wake local waiters, then announce the run's end to every process."""
        self.wake(run_id)
        try:
            self._publisher.publish(run_done(run_id), status)
            self.published += 1
        except _ERRORS as error:  # waiters elsewhere find it at their next DB re-read
            log.warning("run_done_publish_failed", run_id=run_id, error=type(error).__name__)

    # -- waiting -----------------------------------------------------------------------

    def watch(self, run_id: str) -> Watch:
        """Register a waiter and subscribe to its run's channel (once per run here)."""
        watch = Watch(run_id, self, live=False)
        with self._lock:
            first = run_id not in self._watches
            self._watches.setdefault(run_id, set()).add(watch)
            confirmed = self._confirmed.setdefault(run_id, threading.Event())
        if first and not self._send(run_id, "SUBSCRIBE"):
            return watch
        watch.live = confirmed.wait(CONFIRM_TIMEOUT)
        return watch

    def release(self, watch: Watch) -> bool:
        """Forget a waiter; the last one of its run unsubscribes."""
        last = super().release(watch)
        if last:
            with self._lock:
                self._confirmed.pop(watch.run_id, None)
            self._send(watch.run_id, "UNSUBSCRIBE")
        return last

    def close(self) -> None:
        """Stop the listener and close the pub/sub connection."""
        self._stopped = True
        with self._send_lock:
            conn = self._conn
            self._set_conn(None)
        self._connected.set()  # let the listener see the stop
        if conn is not None:
            conn.disconnect()

    def _send(self, run_id: str, command: str) -> bool:
        """Send (UN)SUBSCRIBE on the shared connection, opening it if needed."""
        if time.monotonic() < self._down_until:
            return False
        try:
            with self._send_lock:
                if command == "UNSUBSCRIBE" and self._conn is None:
                    return True  # a new connection subscribes only to runs still watched
                self._start_listener()
                if self._conn is None:
                    self._set_conn(self._open())
                assert self._conn is not None
                self._conn.send_command(command, run_done(run_id))
            return True
        except _ERRORS as error:
            self._down_until = time.monotonic() + RETRY_AFTER
            log.info("run_done_listener_down", error=type(error).__name__)
            return False

    def _open(self) -> Any:
        """A new pub/sub connection, subscribed to every run watched here."""
        conn: Any = self._pool.make_connection()
        conn.connect()
        channels = [run_done(run_id) for run_id in self.watching()]
        if channels:
            conn.send_command("SUBSCRIBE", *channels)
        return conn

    def _start_listener(self) -> None:
        """Start the listener thread (again in a forked child: threads do not survive)."""
        if self._listener is not None and self._pid == os.getpid():
            return
        if self._pid != os.getpid():
            self._set_conn(None)  # the parent's socket; never read it from here
            self._pool.reset()
        self._pid = os.getpid()
        self._listener = threading.Thread(target=self._listen, name="orch-run-done",
                                          daemon=True)
        self._listener.start()

    # -- the listener ------------------------------------------------------------------

    def _listen(self) -> None:
        pid = os.getpid()
        while not self._stopped and pid == os.getpid():
            conn = self._conn
            if conn is None:
                self._connected.wait(IDLE_READ)
                if self._conn is None and self.watching() and not self._reconnect():
                    time.sleep(RETRY_AFTER)
                continue
            try:
                if conn.can_read(timeout=IDLE_READ):
                    self._route(conn.read_response())
            except _ERRORS as error:
                log.info("run_done_connection_lost", error=type(error).__name__)
                with self._send_lock:
                    if self._conn is conn:
                        self._set_conn(None)
                conn.disconnect()

    def _reconnect(self) -> bool:
        """Reopen the connection for the runs still watched; False if Redis is unreachable."""
        try:
            with self._send_lock:
                if self._conn is None:
                    self._set_conn(self._open())
            return True
        except _ERRORS:
            self._down_until = time.monotonic() + RETRY_AFTER
            return False

    def _set_conn(self, conn: Any) -> None:
        """Swap the pub/sub connection (under the send lock); wakes an idle listener."""
        self._conn = conn
        if conn is None:
            self._connected.clear()
        else:
            self._connected.set()

    def _route(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 3:
            return
        kind, channel = response[0], response[1]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if not name.startswith(_PREFIX):
            return
        run_id = name[len(_PREFIX):]
        if kind == b"message":
            self.wake(run_id)
        elif kind == b"subscribe":
            with self._lock:
                confirmed = self._confirmed.get(run_id)
            if confirmed is not None:
                confirmed.set()
