"""One Redis client per process and URL, for test workflows that count calls across workers.

A prefork worker's pool child must not reuse sockets it inherited from its parent, so the
client is keyed by the process id as well as the URL.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

_clients: dict[tuple[int, str], redis.Redis] = {}
_lock = threading.Lock()


def process_client(url: str, **options: Any) -> redis.Redis:
    """This process's client of ``url`` (``options`` apply when it is first made)."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = redis.Redis.from_url(url, **options)
    return client
