"""Several "hosts" on this machine: network namespaces on a bridge, links to cut and heal.

A :class:`Network` is a Linux bridge in the root namespace holding the gateway address
``10.<a>.<b>.1/24`` of a private /24 no interface here uses yet; each :class:`Host` is a
network namespace (``ip netns add``) joined to the bridge by a veth pair, with its own
address ``10.<a>.<b>.<n>``. Servers of the test's own (``redis-server``, a PostgreSQL
cluster) listen on the gateway address, which the root namespace reaches too (it is
local), so the test process, the submitter and the CLI use the same URLs as the hosts.

- ``host.prefix`` (``ip netns exec <ns>``) goes before a command to run it on the host
  (``Workers.start(..., prefix=host.prefix)``); ``ip netns exec`` execs it, so the pid is
  the worker's own.
- ``network.cut(host)`` sets the host's bridge port down: from then on its packets, and
  the servers' packets to it, are dropped silently (a partition, not a refused
  connection: TCP keeps retransmitting); ``network.heal(host)`` sets it up again.
- ``network.remove(host)`` SIGKILLs every process in the namespace and deletes it (its
  veth pair goes with it): a host lost for good.
- ``network.close()`` (the :func:`network` context manager calls it, on failure too)
  kills what still runs in the namespaces and deletes namespaces, veths and the bridge.
  Leftovers of a session that was SIGKILLed (its pid in the names) are removed at the
  next start.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): :func:`netns_or_skip` skips the test with
the reason where ``ip netns`` is not permitted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

PREFIX = "orchnet"  # namespaces: orchnet-<pid>-<host>; bridge ob<pid>; veths ov<pid>x<n>{r,h}
IP_TIMEOUT_S = 20.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True,
                          timeout=IP_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {done.returncode}: "
                           f"{done.stderr.strip()}")
    return done


def netns_problem() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "`ip netns add` needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); this is not root"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        added = _ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
        link = _ip("link", "add", f"ov{os.getpid()}p", "type", "veth", "peer", "name",
                   f"ov{os.getpid()}q", check=False)
        if link.returncode != 0:
            return f"`ip link add ... type veth` is not permitted here: {link.stderr.strip()}"
        _ip("link", "del", f"ov{os.getpid()}p", check=False)
        return None
    finally:
        _ip("netns", "del", probe, check=False)


def netns_or_skip() -> None:
    """Skip the test, with the reason, where network namespaces cannot be made."""
    problem = netns_problem()
    if problem is not None:
        pytest.skip(f"multi-host tests need network namespaces: {problem}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_namespace(namespace: str) -> int:
    """SIGKILL every process in ``namespace`` (until none is left); how many there were."""
    killed: set[int] = set()
    deadline = time.monotonic() + 10
    while (pids := _ns_pids(namespace)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.05)
    return len(killed)


def remove_leftovers() -> list[str]:
    """Delete namespaces, veths and bridges of sessions whose process is gone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(rf"({PREFIX}-(\d+)-\S+)", line)
        if match and not _pid_alive(int(match.group(2))):
            _kill_namespace(match.group(1))
            _ip("netns", "del", match.group(1), check=False)
            removed.append(match.group(1))
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        match = re.match(r"\d+: ((?:ob|ov)(\d+)(?:x\d+[rh]|[pq])?)[@:]", line)
        if match and not _pid_alive(int(match.group(2))):
            _ip("link", "del", match.group(1), check=False)
            removed.append(match.group(1))
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no address or route of the root namespace."""
    used = [ipaddress.ip_network(word, strict=False)
            for word in _ip("-4", "-o", "addr", "show", check=False).stdout.split()
            + _ip("-4", "route", "show", check=False).stdout.split()
            if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", word)]
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 for the test network")


@dataclass
class Host:
    """One namespace on the bridge: ``prefix`` runs a command inside it."""

    name: str
    namespace: str
    veth: str  # the root-side end, a port of the bridge: down = partitioned
    address: str
    removed: bool = False
    cuts: list[tuple[float, float | None]] = field(default_factory=list)  # wall clock

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)

    def pids(self) -> list[int]:
        """Processes running in the host's namespace now."""
        return [] if self.removed else _ns_pids(self.namespace)


class Network:
    """A bridge with a private /24 and the hosts on it (see the module docstring)."""

    def __init__(self) -> None:
        remove_leftovers()
        self.tag = str(os.getpid())
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.bridge = f"ob{self.tag}"
        self.hosts: list[Host] = []
        # A MAC of its own: a bridge otherwise takes its ports' lowest one and changes it
        # when that port goes (a host removed), and the other hosts' ARP entries for the
        # gateway then point nowhere for a minute, a partition the test did not ask for.
        pid = int(self.tag)
        mac = f"02:6f:{pid >> 24 & 255:02x}:{pid >> 16 & 255:02x}:{pid >> 8 & 255:02x}:" \
              f"{pid & 255:02x}"
        _ip("link", "add", self.bridge, "address", mac, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        """A namespace joined to the bridge, with the next address of the subnet."""
        index = len(self.hosts) + 1
        namespace = f"{PREFIX}-{self.tag}-{name}"
        outside, inside = f"ov{self.tag}x{index}r", f"ov{self.tag}x{index}h"
        address = str(self.subnet.network_address + 1 + index)
        host = Host(name, namespace, outside, address)
        _ip("netns", "add", namespace)
        self.hosts.append(host)  # from here on, close() removes it
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def cut(self, host: Host) -> float:
        """Partition ``host`` (its bridge port down); the wall time of the cut."""
        _ip("link", "set", host.veth, "down")
        at = time.time()
        host.cuts.append((at, None))
        return at

    def heal(self, host: Host) -> float:
        """Bring ``host``'s link back; the wall time it came back."""
        _ip("link", "set", host.veth, "up")
        at = time.time()
        if host.cuts and host.cuts[-1][1] is None:
            host.cuts[-1] = (host.cuts[-1][0], at)
        return at

    def remove(self, host: Host) -> int:
        """Lose ``host`` for good: SIGKILL its processes, delete its namespace and link."""
        killed = _kill_namespace(host.namespace)
        _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", host.veth, check=False)  # gone with the namespace, normally
        host.removed = True
        return killed

    def close(self) -> None:
        """Remove every host (processes included), then the bridge. Never raises."""
        for host in self.hosts:
            if not host.removed:
                with contextlib.suppress(Exception):
                    self.remove(host)
        with contextlib.suppress(Exception):
            _ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A :class:`Network` (skip the test where namespaces are not permitted), closed at
    the end whatever happens."""
    netns_or_skip()
    net = Network()
    try:
        yield net
    finally:
        net.close()
