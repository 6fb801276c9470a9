"""Fixtures for the netboot area: network namespaces with a bridge, TFTP servers.

Namespaces are named ``prov-nb-<pid>-<n>`` and deleted afterwards (also those
of a crashed earlier run with the same pid are replaced, never reused).
All traffic stays inside them or on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.helpers import require_binary, require_root

_counter = itertools.count()


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Netns:
    name: str
    extra: list[str] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def _new_name(tag: str) -> str:
    return f"prov-nb-{tag}-{os.getpid() % 100000}-{next(_counter)}"


def _reap_stale() -> None:
    """Namespaces of an earlier run that was killed before its teardown (pid in the name is gone)."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if not name.startswith("prov-nb-") or len(parts) != 5 or not parts[3].isdigit():
            continue
        owner = int(parts[3])
        if owner == os.getpid() % 100000 or any(
            pid % 100000 == owner for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
            if Path(f"/proc/{pid}/cmdline").exists() and b"pytest" in _cmdline(pid)
        ):
            continue
        delete_netns(Netns(name))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def make_netns(tag: str) -> Netns:
    _reap_stale()
    name = _new_name(tag)
    sh("ip", "netns", "del", name, check=False)
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return Netns(name)


def delete_netns(ns: Netns) -> None:
    # kill anything still running inside (a crashed test's dnsmasq or qemu)
    pids = sh("ip", "netns", "pids", ns.name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    for extra in ns.extra:
        sh("ip", "netns", "del", extra, check=False)
    sh("ip", "netns", "del", ns.name, check=False)


@dataclass
class BridgeNet:
    """A namespace with bridge ``br0`` at 10.77.0.1/24 (+ a ULA for IPv6 RAs) and a client namespace
    whose ``v1`` is cabled to the bridge."""

    server: Netns
    client: Netns
    server_ip: str = "10.77.0.1"

    def set_client_mac(self, mac: str) -> None:
        self.client.run("ip", "link", "set", "v1", "down")
        self.client.run("ip", "link", "set", "v1", "address", mac)
        self.client.run("ip", "link", "set", "v1", "up")

    def add_tap(self, name: str) -> None:
        self.server.run("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.server.run("ip", "link", "set", name, "master", "br0", "up")


@pytest.fixture
def bridge_net() -> Iterator[BridgeNet]:
    require_root()
    require_binary("ip")
    server = make_netns("s")
    client = make_netns("c")
    server.extra.append(client.name)
    try:
        server.run("ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        server.run("ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
        server.run("ip", "addr", "add", "fd77::1/64", "dev", "br0", "nodad")
        server.run("ip", "link", "set", "br0", "up")
        server.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", client.name)
        server.run("ip", "link", "set", "v0", "master", "br0", "up")
        client.run("ip", "link", "set", "v1", "up")
        yield BridgeNet(server=server, client=client)
    finally:
        delete_netns(server)


@pytest.fixture
def boot_root(tmp_path: Path) -> Path:
    root = tmp_path / "boot"
    root.mkdir()
    return root
