"""Checks, refusals and lifecycle against the real libvirtd (QEMU driver), without booting an OS."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.drivers.power import get_driver
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerState
from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.base import CREATE_STEPS, STEP_DEFINE
from provisioner.drivers.virt.libvirt import VirtConnection
from provisioner.drivers.virt.spec import GuestSpec
from provisioner.errors import Conflict, ProvError, VirtRefused
from provisioner.lab.libvirtd import LibvirtdHandle
from tests.integration.virt.conftest import NET, POOL

pytestmark = pytest.mark.integration


def gspec(name: str, **kw: Any) -> GuestSpec:
    data: dict[str, Any] = {"name": name, "memory_mib": 128, "virt_type": "qemu",
                            "disks": [{"size_gib": 0.1, "pool": POOL}], "nics": [{"network": NET}]}
    data.update(kw)
    return GuestSpec.parse(data)


def snapshot(conn: VirtConnection, infra: LibvirtdHandle) -> dict[str, Any]:
    return {
        "guests": sorted(g["name"] for g in conn.list_guests()),
        "files": sorted(p.name for p in infra.pool_dir.iterdir()),
        "reservations": conn.network_info(NET).hosts,
        "networks": conn.network_names(),
    }


def test_preflight_of_this_machine(conn: VirtConnection) -> None:
    report = conn.preflight()
    caps = report.libvirt
    assert "qemu" in caps["domain_types"]
    if report.kvm_module == "kvm_pvm":
        # the project's machines: libvirt offers kvm, the verdict must not trust it
        assert "kvm" in caps["domain_types"]
        assert report.overall == pf.SOFTWARE_KVM_ONLY and not report.kvm_allowed
        assert any("offers domain type 'kvm'" in w for w in report.warnings)


def test_bad_input_defines_nothing(conn: VirtConnection, infra: LibvirtdHandle, uid: str) -> None:
    report = conn.preflight()
    conn.create_guest(gspec(f"a-{uid}", nics=[{"network": NET, "mac": "52:54:00:e2:00:01"}]), report, start=False)
    before = snapshot(conn, infra)
    cases: list[tuple[GuestSpec, type[Exception], str]] = [
        (gspec(f"b-{uid}", disks=[{"size_gib": 1, "pool": "nopool"}]), VirtRefused, "unknown storage pool"),
        (gspec(f"b-{uid}", nics=[{"network": "nonet"}]), VirtRefused, "unknown network"),
        (gspec(f"a-{uid}"), Conflict, "already exists"),
        (gspec(f"b-{uid}", nics=[{"network": NET, "mac": "52:54:00:e2:00:01"}]), Conflict, "already used"),
        (gspec(f"b-{uid}", memory_mib=conn.free_memory_mib() + 1024), VirtRefused, "free memory"),
    ]
    if not report.kvm_allowed:
        cases.append((gspec(f"b-{uid}", virt_type="kvm", cpu_mode="host-model"), VirtRefused, "kvm refused"))
    if not report.nested_allowed:
        cases.append((gspec(f"b-{uid}", virt_type="kvm", nested=True), VirtRefused, "refused"))
    for spec, exc, text in cases:
        with pytest.raises(exc, match=text):
            conn.create_guest(spec, report)
        assert snapshot(conn, infra) == before, text


def test_steps_are_reported_and_a_step_that_raises_rolls_back(conn: VirtConnection, infra: LibvirtdHandle,
                                                                uid: str) -> None:
    """The conductor's task follows create_guest through on_step; a cancel raised there undoes the guest."""
    before = snapshot(conn, infra)
    seen: list[str] = []

    class Cancelled(ProvError):
        pass

    def cancel_at_define(step: str) -> None:
        seen.append(step)
        if step == STEP_DEFINE:
            raise Cancelled("cancelled")

    spec = gspec(f"st-{uid}", seed={"user_data": "#cloud-config\n"},
                 nics=[{"network": NET, "mac": "52:54:00:e2:00:07"}])
    with pytest.raises(Cancelled):
        conn.create_guest(spec, conn.preflight(), on_step=cancel_at_define)
    assert seen == list(CREATE_STEPS[:4])  # networks, volumes, seed ISO, define
    assert snapshot(conn, infra) == before  # volumes, seed ISO and the DHCP reservation are gone
    seen.clear()
    conn.create_guest(spec, conn.preflight(), start=True, on_step=seen.append)
    assert seen == list(CREATE_STEPS) and conn.state(spec.name) == "running"


def test_free_memory_is_not_under_reported(conn: VirtConnection) -> None:
    """getFreeMemory under-reports with hot-plugged memory; we use the node memory stats."""
    avail_kb = pf.collect_facts("/")["memory"]["available_kb"]
    assert conn.free_memory_mib() >= avail_kb // 1024 // 2


def test_seed_iso_uefi_scsi_define_and_delete(conn: VirtConnection, infra: LibvirtdHandle, uid: str) -> None:
    """NoCloud seed uploaded through a libvirt stream; UEFI + virtio-scsi XML accepted with VALIDATE."""
    name = f"seed-{uid}"
    spec = gspec(name, firmware="uefi", disks=[{"size_gib": 0.1, "pool": POOL, "bus": "virtio-scsi"}],
                 seed={"user_data": "#cloud-config\npassword: x\n", "network_config": "version: 2\n"},
                 boot=["hd", "cdrom"])
    conn.create_guest(spec, conn.preflight(), start=False)
    files = sorted(p.name for p in infra.pool_dir.iterdir())
    assert files == [f"{name}-disk0.qcow2", f"{name}-seed.iso"]
    iso = (infra.pool_dir / f"{name}-seed.iso").read_bytes()
    assert iso[0x8001:0x8006] == b"CD001" and b"cidata" in iso[0x8000:0x8100].lower()
    xml = conn.domain_xml(name, inactive=True)
    assert "virtio-scsi" in xml and "OVMF_CODE_4M.fd" in xml and "device='cdrom'" in xml
    conn.delete_guest(name)
    assert list(infra.pool_dir.iterdir()) == []


def test_backing_image(conn: VirtConnection, infra: LibvirtdHandle, uid: str) -> None:
    base = conn.create_volume(POOL, f"base-{uid}.qcow2", 64 * 1024 * 1024)
    try:
        disk = {"size_gib": 1, "pool": POOL, "backing_image": f"base-{uid}.qcow2"}
        conn.create_guest(gspec(f"bk-{uid}", disks=[disk]), conn.preflight(), start=False)
        head = (infra.pool_dir / f"bk-{uid}-disk0.qcow2").read_bytes()[:512]
        assert head[:4] == b"QFI\xfb" and base.encode() in head  # qcow2 header names its backing file
        conn.delete_guest(f"bk-{uid}")
    finally:
        conn.delete_volume_path(base)


def test_power_driver_against_libvirtd(conn: VirtConnection, infra: LibvirtdHandle, uid: str) -> None:
    """A guest enrolled as a host: bmc kind libvirt drives it through the same libvirtd."""
    name = f"pw-{uid}"
    conn.create_guest(gspec(name, disks=[], boot=["hd"]), conn.preflight(), start=False)
    drv = get_driver(BmcSpec(kind="libvirt", address=name, options={"uri": infra.uri, "domain": name}))
    drv.validate()
    assert drv.get_power_state() == PowerState.OFF
    drv.set_boot_device(BootSetting(BootDevice.PXE))
    assert drv.get_boot_device() == BootSetting(BootDevice.PXE, persistent=True)
    drv.set_power_state(PowerAction.ON)
    assert drv.get_power_state() == PowerState.ON
    assert "<boot dev='network'/>" in conn.domain_xml(name)  # the running guest got the new order
    drv.set_power_state(PowerAction.SOFT_OFF, soft_timeout=1)
    assert drv.get_power_state() == PowerState.OFF
