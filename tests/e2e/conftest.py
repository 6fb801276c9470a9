"""The e2e tier: a real virtual lab (tests.support.labrig) installed through the workflow.

Everything is started here and removed afterwards (also on failure): a private
libvirtd, a live controller, the lab (host-only bridge ``prov-e2e-*``, TCG
guests, ipmi_sim BMCs on loopback, dnsmasq, apt-cacher-ng). Payloads are
cached under /var/cache/prov-test/ (deploy ramdisk, Debian image, apt cache),
so only the first run downloads anything.

One lab host (``lab_net``) is given a declared network before the rack is installed: a
static address that no DHCP server hands out (the boot NIC's reservation only serves the
network boot) and a tagged VLAN on its NIC; the test's own VLAN interface on the lab bridge
is the other end of that VLAN.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.vlan_port import vlan_port
from tests.support.helpers import require_binary, require_root
from tests.support.labrig import Rig, free_subnet, host_events, lab_rig, phase_breakdown

HOSTS = 2
# Budget of the whole rack install (TCG guests on a 2-core machine: ~10 min quiet, far more when
# other guests share the cores), then a clear failure.
INSTALL_TIMEOUT = float(os.environ.get("PROV_E2E_INSTALL_TIMEOUT", "1500"))
# Reduced but real configuration run (see the README of tests/e2e in the final report): the sshd,
# admin user, sysctl and nftables controls of the hardening role and the container engine with its
# verification container; apt upgrades, auditd and package removal are switched off because under
# TCG they alone take several minutes per guest. PROV_E2E_FULL_HARDENING=1 runs everything.
REDUCED_VARS: dict[str, Any] = {} if os.environ.get("PROV_E2E_FULL_HARDENING") == "1" else {
    "hardening_auto_updates": False,
    "hardening_auditd": False,
    "hardening_remove_packages": False,
    "hardening_disable_services": False,
}
VERIFY_IMAGE = "localhost/prov-verify:busybox"  # imported by the container_verify role
# The declared network of lab-01: its static address is .60 of the lab subnet (reservations are
# .10 and up, dnsmasq's pool .100-.199), and VLAN 42 carries a subnet of its own.
NET_HOST_INDEX = 0
STATIC_HOST_PART = 60
VLAN_ID = 42


@dataclass
class Installed:
    rig: Rig
    seconds: float
    task: dict[str, Any]
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> host record
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)  # last events per host, for failure messages


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    require_root()
    require_binary("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "dnsmasq", "ipmi_sim", "ipmitool",
                   "apt-cacher-ng", "ip", "ssh", "ssh-keygen", "ssh-keyscan", "debootstrap")
    ctl_settings = {"deploy_wait_timeout": INSTALL_TIMEOUT, "install_wait_timeout": INSTALL_TIMEOUT,
                    "ssh_wait_timeout": 600.0, "configure_timeout": INSTALL_TIMEOUT}
    with lab_rig(HOSTS, memory_mib=1024, playbooks=["site"], engine="docker", controller=ctl_settings,
                 ansible_vars=REDUCED_VARS) as r:
        yield r


@dataclass(frozen=True)
class LabNet:
    """The network lab-01 is installed with, and the controller's end of its VLAN."""

    host: str
    mac: str
    reservation: str  # the DHCP reservation: what the host gets while it network-boots
    static_ip: str  # the installed OS's static address on its NIC (prov0)
    vlan_id: int
    vlan_ip: str  # the installed OS's address on prov0.<id>
    local_if: str  # the test's end of the VLAN (a TAP behind tests/e2e/vlan_port.py on the lab bridge)
    local_ip: str


def address(host: dict[str, Any]) -> str:
    """Where a lab host answers once installed: its ip_address (the static one), else its reservation."""
    return str(host.get("ip_address") or host["nics"][0]["ip"])


@pytest.fixture(scope="module")
def lab_net(rig: Rig) -> Iterator[LabNet]:
    """Before the rack is installed: lab-01 gets a static address and a VLAN, the bridge a VLAN interface."""
    spec = rig.spec
    name, mac, reservation = spec.host_name(NET_HOST_INDEX), spec.host_mac(NET_HOST_INDEX), \
        spec.host_ip(NET_HOST_INDEX)
    static_ip = str(spec.network.network_address + STATIC_HOST_PART)
    vlan_net = ipaddress.IPv4Network(free_subnet())  # a 10.214.x.0/24 nothing on this machine uses
    local_ip, vlan_ip = str(vlan_net.network_address + 1), str(vlan_net.network_address + STATIC_HOST_PART)
    # The test's end of the VLAN: a TAP behind a userspace 802.1Q access port on the lab bridge
    # (tests/e2e/vlan_port.py: this machine's kernel has no VLAN support of its own).
    local_if = f"pv{spec.bridge[-6:]}"
    net = LabNet(name, mac, reservation, static_ip, VLAN_ID, vlan_ip, local_if, local_ip)
    with vlan_port(spec.bridge, VLAN_ID, local_if, f"{local_ip}/{vlan_net.prefixlen}"):
        with rig.ctl.client() as c:
            c.patch(f"/api/v1/hosts/{name}", json={
                # "prov0": the name cloud-init gives the deploy NIC without a declared network too
                "nics": [{"mac": mac, "name": "prov0", "boot": True, "ip": reservation,
                          "address": f"{static_ip}/{spec.network.prefixlen}", "gateway": spec.gateway}],
                "network": {"vlans": [{"id": VLAN_ID, "link": "prov0",
                                       "address": f"{vlan_ip}/{vlan_net.prefixlen}"}]},
                "ip_address": static_ip,  # where prov (SSH, Ansible) reaches the installed host
            })
        yield net


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))
    if len(data) % 2:
        total += data[-1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(dst: str, *, count: int = 3, timeout: float = 2.0) -> bool:
    """True if ``dst`` answers an ICMP echo (RFC 792) within ``count`` tries; a raw socket (root), so
    the machine needs no ping binary."""
    ident = os.getpid() & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        for seq in range(count):
            payload = b"prov-e2e-vlan"
            csum = _checksum(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload)
            s.sendto(struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload, (dst, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data, peer = s.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4  # the IPv4 header comes with a raw socket's data
                kind, _, _, got_id, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if peer[0] == dst and kind == 0 and got_id == ident:
                    return True
    return False


def wait_task(rig: Rig, task_id: int, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with rig.ctl.client() as c:
        while True:
            task = c.get(f"/api/v1/tasks/{task_id}")
            if task["status"] in ("succeeded", "failed", "cancelled"):
                return dict(task)
            if time.monotonic() > deadline:
                states = {h: c.get(f"/api/v1/hosts/{h}")["state"] for h in rig.lab.state.data["hosts"]}
                consoles = "\n".join(f"--- {h}\n{rig.console(h, 15)}" for h in states)
                pytest.fail(f"{what} did not finish within {timeout:.0f} s (step {task.get('step')!r}, "
                            f"hosts {states})\n{consoles}")
            time.sleep(3)


@pytest.fixture(scope="module")
def installed(rig: Rig, lab_net: LabNet) -> Installed:
    """``prov rack provision lab`` through the API, to the end; host records and phase timings
    (lab-01 with the declared network of ``lab_net``)."""
    t0 = time.monotonic()
    with rig.ctl.client() as c:
        task = c.post("/api/v1/racks/lab/provision", json={"concurrency": HOSTS})
    done = wait_task(rig, task["id"], INSTALL_TIMEOUT, "rack provision")
    out = Installed(rig, time.monotonic() - t0, done)
    with rig.ctl.client() as c:
        for name in rig.lab.state.data["hosts"]:
            out.hosts[name] = c.get(f"/api/v1/hosts/{name}")
            events = host_events(rig, name)
            out.phases[name] = phase_breakdown(events)
            out.history[name] = [f"{e['created_at'][11:19]} {e['event']} {e.get('to_state') or ''} {e['message'][:160]}"
                                 for e in events[-25:]]
    if done["status"] != "succeeded":
        for name, lines in out.history.items():
            print(f"--- history of {name}\n" + "\n".join(lines) + f"\n--- console of {name}\n{rig.console(name, 25)}")
    print(f"\nE2E rack install of {HOSTS} hosts: {out.seconds:.0f} s; phases {out.phases}")
    return out
