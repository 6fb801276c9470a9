"""Our dnsmasq config, validated by dnsmasq itself and served for real in a network namespace.

Clients are busybox ``udhcpc`` in a second namespace cabled to the bridge; it
can send option 93 (client arch) and 77 (user class "iPXE") like firmware and
iPXE do, and its script prints what it got (address, next-server, boot file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.drivers.boot.dhcp import DhcpConfig, DnsmasqManager, HostEntry
from tests.support.helpers import require_binary

pytestmark = pytest.mark.integration

KNOWN = "52:54:00:aa:00:01"
UNKNOWN = "52:54:00:aa:00:99"
ARCH_BIOS = "0x5d:0000"
ARCH_UEFI = "0x5d:0007"
USERCLASS_IPXE = "0x4d:69505845"  # "iPXE"


def make_cfg(state: Path, **kw) -> DhcpConfig:
    base = dict(interface="br0", server_ip="10.77.0.1", http_base="http://10.77.0.1:8700", state_dir=state,
                range_start="10.77.0.100", range_end="10.77.0.150", lease_time="2m")
    base.update(kw)
    return DhcpConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{}, {"unknown_mac_action": "discover"},
                                {"mode": "proxy", "subnet": "10.77.0.0", "range_start": "", "range_end": ""}])
def test_dnsmasq_accepts_config(tmp_path, kw):
    require_binary("dnsmasq")
    m = DnsmasqManager(make_cfg(tmp_path / "st", **kw))
    m.set_host(HostEntry(mac=KNOWN, hostname="node1", ip="10.77.0.11", netboot=True), reload=False)
    m.check()  # dnsmasq --test


def test_dnsmasq_rejects_broken_config(tmp_path):
    require_binary("dnsmasq")
    m = DnsmasqManager(make_cfg(tmp_path / "st"))
    m.write_config()
    m.cfg.conf_file.write_text(m.cfg.conf_file.read_text() + "dhcp-range=bogus-thing\n")
    # check() rewrites the config from our template, so test dnsmasq's verdict on the edited file directly
    res = subprocess.run(["dnsmasq", "--test", f"--conf-file={m.cfg.conf_file}"], capture_output=True, text=True)
    assert res.returncode != 0


@pytest.fixture
def udhcpc(bridge_net, tmp_path):
    require_binary("busybox")
    script = tmp_path / "udhcpc.sh"
    script.write_text('#!/bin/sh\necho "EV=$1 ip=$ip siaddr=$siaddr boot_file=$boot_file"\n')
    script.chmod(0o755)

    def ask(mac: str, *opts: str, tries: int = 2) -> dict[str, str] | None:
        bridge_net.set_client_mac(mac)
        # -T 3: dnsmasq pings a dynamic address before offering it (~3 s), reservations come at once
        args = ["busybox", "udhcpc", "-i", "v1", "-n", "-q", "-f", "-t", str(tries), "-T", "3", "-s", str(script)]
        for o in opts:
            args += ["-x", o]
        out = bridge_net.client.run(*args, check=False).stdout
        for line in out.splitlines():
            if line.startswith("EV=bound"):
                return dict(kv.split("=", 1) for kv in line.split()[1:])
        return None

    return ask


def start_manager(bridge_net, cfg: DhcpConfig) -> DnsmasqManager:
    """Run DnsmasqManager (and so dnsmasq) inside the server namespace via setns in a child? Simpler:
    the manager runs dnsmasq with an `ip netns exec` prefix binary wrapper."""
    wrapper = cfg.state_dir.parent / "dnsmasq-in-ns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {bridge_net.server.name} dnsmasq "$@"\n')
    wrapper.chmod(0o755)
    cfg.binary = str(wrapper)
    return DnsmasqManager(cfg)


def test_real_dhcp_full_mode(bridge_net, udhcpc, tmp_path):
    require_binary("dnsmasq")
    m = start_manager(bridge_net, make_cfg(tmp_path / "st"))
    m.set_host(HostEntry(mac=KNOWN, hostname="node1", ip="10.77.0.11", netboot=True), reload=False)
    with m:
        assert m.running()
        bios = udhcpc(KNOWN, ARCH_BIOS)
        assert bios == {"ip": "10.77.0.11", "siaddr": "10.77.0.1", "boot_file": "undionly.kpxe"}
        uefi = udhcpc(KNOWN, ARCH_UEFI)
        assert uefi is not None and uefi["boot_file"] == "ipxe.efi"
        ipxe = udhcpc(KNOWN, ARCH_BIOS, USERCLASS_IPXE)
        assert ipxe is not None and ipxe["boot_file"] == "http://10.77.0.1:8700/boot/boot.ipxe"
        # unknown MACs get nothing in "ignore" mode
        assert udhcpc(UNKNOWN, ARCH_BIOS, tries=1) is None
        # netboot off: one file rewritten and SIGHUP; DHCP still hands out the chain (the per-MAC
        # script decides local boot) and, above all, dnsmasq survives the reload with a lease held
        pid_before = m.pid
        assert m.set_host(HostEntry(mac=KNOWN, hostname="node1", ip="10.77.0.11", netboot=False))
        time.sleep(0.5)
        assert m.pid == pid_before and m.restarts == 0, m.log_tail(10)
        off = udhcpc(KNOWN, ARCH_BIOS, USERCLASS_IPXE)
        assert off is not None and off["ip"] == "10.77.0.11"
        # a changed reservation takes effect after the reload
        m.set_host(HostEntry(mac=KNOWN, hostname="node1", ip="10.77.0.21", netboot=False))
        time.sleep(0.3)
        moved = udhcpc(KNOWN, ARCH_BIOS)
        assert moved is not None and moved["ip"] == "10.77.0.21"
        # a new host file is picked up too
        m.set_host(HostEntry(mac=UNKNOWN, hostname="node2", ip="10.77.0.12", netboot=True))
        time.sleep(0.3)
        new = udhcpc(UNKNOWN, ARCH_UEFI)
        assert new is not None and new["ip"] == "10.77.0.12" and new["boot_file"] == "ipxe.efi"
        # removing it takes it away again
        m.remove_host(UNKNOWN)
        time.sleep(0.3)
        assert udhcpc(UNKNOWN, ARCH_BIOS, tries=1) is None
        assert m.restarts == 0, m.log_tail(10)  # no crash on any of the reloads
        pid = m.pid
    assert pid is not None
    time.sleep(0.2)
    assert not _alive(pid)  # clean shutdown
    log = m.cfg.log_file.read_text()
    assert "RTR-SOLICIT" in log or "router advertisement" in log  # IPv6 RAs are on


def test_real_dhcp_discover_mode(bridge_net, udhcpc, tmp_path):
    require_binary("dnsmasq")
    m = start_manager(bridge_net, make_cfg(tmp_path / "st", unknown_mac_action="discover"))
    m.set_host(HostEntry(mac=KNOWN, hostname="node1", ip="10.77.0.11", netboot=False), reload=False)
    with m:
        unknown = udhcpc(UNKNOWN, ARCH_BIOS, USERCLASS_IPXE)
        # the discovery chain: the iPXE script URL (which serves the discovery script, never an installer)
        assert unknown is not None, m.cfg.log_file.read_text()
        assert unknown["boot_file"] == "http://10.77.0.1:8700/boot/boot.ipxe"
        assert unknown["ip"].startswith("10.77.0.1")
        known = udhcpc(KNOWN, ARCH_BIOS)
        assert known is not None and known["ip"] == "10.77.0.11" and known["boot_file"] == "undionly.kpxe"


def test_supervisor_restarts_dnsmasq(bridge_net, tmp_path):
    require_binary("dnsmasq")
    m = start_manager(bridge_net, make_cfg(tmp_path / "st", ipv6_ra=False))
    with m:
        first = m.pid
        assert first is not None
        # the wrapper exec()s, so the child pid is dnsmasq itself
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (m.pid in (None, first) or m.restarts < 1):
            time.sleep(0.1)
        assert m.pid not in (None, first)
        assert m.restarts == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; check its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
