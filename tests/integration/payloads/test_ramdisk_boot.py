"""The deploy/test ramdisk boots under TCG and reports what it found (selftest)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from provisioner.lab.ramdisk import Ramdisk

pytestmark = pytest.mark.integration

# Generous: ~4 s on an idle machine, but several helpers share 2 cores.
BOOT_TIMEOUT = 90
SELFTEST_CMDLINE = "console=ttyS0 quiet prov.selftest=1 prov.poweroff=1"


def _devices(tmp_path: Path) -> list[str]:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    return [
        "-netdev", "user,id=n0,restrict=on",
        # romfile= (empty): no iPXE option ROM, we boot the kernel directly.
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-drive", f"file={disk},if=none,id=d0,format=qcow2",
        "-device", "virtio-blk-pci,drive=d0",
        "-device", "virtio-rng-pci",
        "-device", "virtio-balloon-pci",
    ]  # fmt: skip


@pytest.mark.parametrize("kernel_kind", ["vmlinux", "bzimage"])
def test_ramdisk_selftest_and_poweroff(ramdisk: Ramdisk, boot_guest, tmp_path: Path, kernel_kind: str) -> None:
    kernel = ramdisk.vmlinux if kernel_kind == "vmlinux" else ramdisk.kernel
    args = ["-kernel", str(kernel), "-initrd", str(ramdisk.initrd), "-append", SELFTEST_CMDLINE]
    guest = boot_guest([*args, *_devices(tmp_path)], name=kernel_kind)
    # No ^: SeaBIOS leaves terminal escapes on the first console line.
    guest.wait_for(r"PROV-RAMDISK: up", BOOT_TIMEOUT)
    up = guest.elapsed()
    guest.wait_for(r"^PROV-RAMDISK: done", BOOT_TIMEOUT)
    done = guest.elapsed()
    # Powered off: QEMU ends by itself, cleanly.
    assert guest.wait_exit(30) == 0
    out = guest.text()
    for line in (
        "PROV-RAMDISK: ip=10.0.2.15",  # slirp's first DHCP address
        "PROV-SELFTEST: disk=virtio_blk",
        "PROV-SELFTEST: nic=virtio_net",
        "PROV-SELFTEST: rng=virtio_rng.0",
        "PROV-SELFTEST: balloon=present",
        "PROV-SELFTEST: lease=10.0.2.15",
    ):
        assert re.search(rf"^{re.escape(line)}\r?$", out, re.MULTILINE), f"{line!r} missing:\n{guest.tail()}"
    print(f"{kernel_kind}: up {up:.1f}s, done {done:.1f}s, exit {guest.elapsed():.1f}s")


def test_ramdisk_without_devices_reports_absence(ramdisk: Ramdisk, boot_guest) -> None:
    """No NIC, no disk, no balloon: the selftest says so instead of hanging."""
    args = ["-kernel", str(ramdisk.vmlinux), "-initrd", str(ramdisk.initrd), "-append", SELFTEST_CMDLINE]
    args += ["-nic", "none"]
    guest = boot_guest(args, name="bare")
    guest.wait_for(r"^PROV-RAMDISK: done", BOOT_TIMEOUT)
    assert guest.wait_exit(30) == 0
    out = guest.text()
    for fact in ("disk=none", "nic=none", "balloon=absent", "lease=none"):
        assert f"PROV-SELFTEST: {fact}" in out, f"{fact} missing:\n{guest.tail()}"
    assert "PROV-RAMDISK: no network interface" in out


def test_ramdisk_dhcp_on_the_nic_named_by_prov_mac(ramdisk: Ramdisk, boot_guest) -> None:
    """Two NICs on two networks: prov.mac picks the second (how iPXE names the boot NIC)."""
    mac = "52:54:00:00:00:02"
    args = ["-kernel", str(ramdisk.vmlinux), "-initrd", str(ramdisk.initrd)]
    args += ["-append", f"console=ttyS0 quiet prov.poweroff=1 prov.mac={mac.upper()}"]
    args += ["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile="]
    args += ["-netdev", "user,id=n1,restrict=on,net=10.0.3.0/24"]
    args += ["-device", f"virtio-net-pci,netdev=n1,mac={mac},romfile="]
    guest = boot_guest(args, name="two-nics")
    guest.wait_for(r"^PROV-RAMDISK: done", BOOT_TIMEOUT)
    assert guest.wait_exit(30) == 0
    assert re.search(r"^PROV-RAMDISK: ip=10\.0\.3\.15\r?$", guest.text(), re.MULTILINE), guest.tail()
