"""The multi-host helper (tests/support/netns.py): hosts reach the bridge's address, a cut
drops their packets, a heal brings them back, removing a host kills what runs in it, and
nothing is left behind. Skipped where ``ip netns`` is not permitted (not root)."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.support.netns import PREFIX, network

CONNECT = ("import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1.5)"
           ".close()")


def _connects(prefix: tuple[str, ...], address: str, port: int) -> bool:
    done = subprocess.run([*prefix, sys.executable, "-c", CONNECT, address, str(port)],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.returncode == 0


def _mac(link: str) -> str:
    shown = subprocess.run(["ip", "-o", "link", "show", link], capture_output=True, text=True)
    return shown.stdout.split("link/ether ")[1].split()[0]


def _leftovers() -> str:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return "\n".join(line for line in names.splitlines() if line.startswith(PREFIX))


def test_hosts_reach_the_bridge_and_a_cut_drops_them() -> None:
    with network() as net, socket.socket() as server:
        server.bind((net.gateway, 0))
        server.listen(8)
        port = server.getsockname()[1]
        a, b = net.add_host("a"), net.add_host("b")
        assert a.address != b.address
        assert _connects(a.prefix, net.gateway, port) and _connects(b.prefix, net.gateway, port)
        net.cut(a)
        assert not _connects(a.prefix, net.gateway, port)  # dropped: a timeout
        assert _connects(b.prefix, net.gateway, port)  # the other host is not affected
        net.heal(a)
        assert _connects(a.prefix, net.gateway, port)
        assert a.cuts and a.cuts[0][1] is not None

        gateway_mac = _mac(net.bridge)
        sleeper = subprocess.Popen([*b.prefix, "sleep", "300"])
        try:
            assert net.remove(b) >= 1
            assert sleeper.wait(10) == -9
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
        assert b.namespace not in _leftovers()
        # The bridge keeps its own MAC when a port goes: the other hosts' ARP entries for
        # the gateway stay right (a bridge's default MAC is its lowest port's).
        assert _mac(net.bridge) == gateway_mac and gateway_mac.startswith("02:6f:")
        assert _connects(a.prefix, net.gateway, port)
        namespace = a.namespace
    assert namespace not in _leftovers()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert net.bridge not in links and a.veth not in links
