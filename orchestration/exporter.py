"""Processes an operator starts: the Prometheus exporter and Flower (with its auth guard)."""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestration.errors import ConfigurationError

if TYPE_CHECKING:
    from orchestration.app import Orchestrator


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_command(address: str, port: int, env: Mapping[str, str]) -> list[str]:
    """The Flower command line; refuses a non-loopback address without basic auth."""
    auth = env.get("FLOWER_BASIC_AUTH", "")
    if not is_loopback(address) and ":" not in auth:
        raise ConfigurationError(
            f"refusing to start Flower on {address} without authentication: set "
            "FLOWER_BASIC_AUTH=user:password (or listen on 127.0.0.1)")
    command = [sys.executable, "-m", "celery", "-A", "orchestration", "flower",
               f"--address={address}", f"--port={port}"]
    if auth:
        command.append(f"--basic-auth={auth}")
    return command


def serve_metrics(orchestrator: Orchestrator, address: str, port: int,
                  *, refresh_s: float = 5.0) -> None:
    """Serve the workers' metrics and queue depths until interrupted."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as mp

    from orchestration.metrics import QUEUE_DEPTH
    from orchestration.observe import known_queues, queue_depths

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
