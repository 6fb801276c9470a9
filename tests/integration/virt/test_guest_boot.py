"""A guest really boots under the session's libvirtd and proves its devices from the inside.

Direct kernel boot of prov's test ramdisk (Debian kernel + busybox initramfs, ``prov.selftest=1``),
TCG, 192 MiB, a virtio disk, a virtio NIC with a fixed MAC and a DHCP reservation on a NAT
network, virtio-rng, a virtio balloon with stats, the serial console logged to a file.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from provisioner.drivers.virt.libvirt import VirtConnection
from provisioner.drivers.virt.spec import GuestSpec
from provisioner.lab.libvirtd import LibvirtdHandle
from tests.integration.virt.conftest import NET, POOL

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 120  # ~12-15 s on an idle 2-core machine under TCG; generous for a busy CI box
_FACT = re.compile(r"PROV-SELFTEST: (\w+)=(\S+)")


def wait_for(path: Path, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text(errors="replace")
            if marker in text:
                return text
        time.sleep(0.25)
    raise AssertionError(f"{marker!r} not on the console within {timeout}s; last lines:\n{text[-2000:]}")


def test_guest_boots_with_virtio_devices_and_leaves_nothing(
    conn: VirtConnection, infra: LibvirtdHandle, ramdisk, uid: str,  # type: ignore[no-untyped-def]
) -> None:
    report = conn.preflight()
    name, mac = f"boot-{uid}", "52:54:00:e1:00:01"
    spec = GuestSpec.parse({
        "name": name, "memory_mib": 192, "vcpus": 1, "virt_type": "qemu",
        "disks": [{"size_gib": 0.25, "bus": "virtio-blk", "pool": POOL}],
        "nics": [{"network": NET, "mac": mac}],
        "rng": True, "memballoon": True, "balloon_stats_period": 2,
        "direct_boot": {"kernel": str(ramdisk.vmlinux), "initrd": str(ramdisk.initrd),
                        "cmdline": "console=ttyS0 panic=-1 prov.selftest=1"},
    })
    info = conn.create_guest(spec, report)
    assert info["state"] == "running" and info["virt_type"] == "qemu"
    reserved = next(h["ip"] for h in conn.network_info(NET).hosts if h["mac"] == mac)
    log = Path(info["console_log"])
    assert log.parent == infra.console_dir

    text = wait_for(log, "PROV-SELFTEST: lease=", BOOT_TIMEOUT)
    facts = dict(_FACT.findall(text))
    assert facts["disk"] == "virtio_blk", facts
    assert facts["nic"] == "virtio_net", facts
    assert facts["rng"].startswith("virtio_rng"), facts
    assert facts["balloon"] == "present", facts
    assert facts["lease"] == reserved, (facts, reserved)  # the fixed MAC got its reservation
    # ... and libvirt's dnsmasq agrees
    assert [le["ip"] for le in conn.leases(NET, mac)] == [reserved]
    assert conn.guest_info(name)["nics"][0]["ip"] == reserved
    assert any("PROV-SELFTEST: disk=virtio_blk" in ln for ln in conn.console_tail(name, 200))

    # graceful shutdown: the busybox shell ignores ACPI, so the timeout path destroys it
    assert conn.shutdown(name, timeout=2) in ("shutdown", "destroyed")
    assert conn.state(name) == "shutoff"
    out = conn.delete_guest(name)
    assert out["reservations_released"] == [mac]
    assert name not in [g["name"] for g in conn.list_guests()]
    assert not conn.volume_exists(POOL, f"{name}-disk0.qcow2")
    assert list(infra.pool_dir.iterdir()) == []
    assert not log.exists()
    assert all(h["mac"] != mac for h in conn.network_info(NET).hosts)
    leftovers = [p for p in (infra.base / "lib" / "qemu").rglob("*") if name in p.name]
    assert leftovers == [], leftovers
