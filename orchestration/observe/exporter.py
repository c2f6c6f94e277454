"""Processes an operator starts: the Prometheus exporter and Flower (with its auth guard)."""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from orchestration.core.metrics import QUEUE_DEPTH
from orchestration.define.workflow import Host
from orchestration.errors import ConfigurationError
from orchestration.observe.queries import known_queues, queue_depths


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class FlowerLaunch:
    """How to start Flower: its command line (no secrets) and its environment."""

    argv: list[str]
    env: dict[str, str]


def flower_command(address: str, port: int, env: Mapping[str, str]) -> FlowerLaunch:
    """Flower's launch; refuses empty credentials, and no credentials beyond loopback.

    The credentials stay in ``FLOWER_BASIC_AUTH`` (Flower reads its ``FLOWER_*``
    environment): on the command line, any local user would read them in ``ps``.
    """
    auth = env.get("FLOWER_BASIC_AUTH", "")
    if auth:
        _check_basic_auth(auth)
    elif not is_loopback(address):
        raise ConfigurationError(
            f"refusing to start Flower on {address} without authentication: set "
            "FLOWER_BASIC_AUTH=user:password (or listen on 127.0.0.1)")
    child = dict(env)
    if not auth:
        # Flower would read an empty FLOWER_BASIC_AUTH as one empty credential.
        child.pop("FLOWER_BASIC_AUTH", None)
    argv = [sys.executable, "-m", "celery", "-A", "orchestration", "flower",
            f"--address={address}", f"--port={port}"]
    return FlowerLaunch(argv, child)


def _check_basic_auth(auth: str) -> None:
    """Every comma-separated ``user:password`` (as Flower splits it) has both parts."""
    for number, credential in enumerate(auth.split(","), start=1):
        user, colon, password = credential.partition(":")
        if not colon or not user.strip() or not password.strip():
            raise ConfigurationError(
                f"refusing to start Flower: FLOWER_BASIC_AUTH credential {number} must be "
                "user:password with neither part empty (several: user1:pw1,user2:pw2)")


def serve_metrics(orchestrator: Host, address: str, port: int,
                  *, refresh_s: float = 5.0) -> None:
    """Serve the workers' metrics and queue depths until interrupted."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as mp


    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=address, registry=registry)
    while True:
        for queue, depth in queue_depths(orchestrator, known_queues(orchestrator)).items():
            if depth is not None:
                QUEUE_DEPTH.labels(queue).set(depth)
        time.sleep(refresh_s)
