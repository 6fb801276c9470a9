"""LibvirtPower (bmc kind ``libvirt``) against libvirt's in-process test driver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from provisioner.drivers.power import get_driver
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerState
from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.libvirt import open_connection
from provisioner.drivers.virt.spec import GuestSpec
from provisioner.errors import BmcError, BmcUnreachable, InvalidInput

URI = "test:///default"


@pytest.fixture
def guest() -> Iterator[str]:
    name = f"pw-{uuid.uuid4().hex[:6]}"
    report = pf.VirtReport("hardware-kvm", "", True, True, "intel", "kvm_intel", [])
    # test:///default keeps its state only while a connection is open: hold one for the test.
    with open_connection(URI) as conn:
        conn.create_guest(GuestSpec.parse({"name": name, "memory_mib": 128, "boot": ["hd"]}), report, start=False)
        yield name
        conn.delete_guest(name)


def driver(domain: str, uri: str = URI):  # type: ignore[no-untyped-def]
    return get_driver(BmcSpec(kind="libvirt", address=domain, options={"uri": uri, "domain": domain}))


def test_power_cycle(guest: str) -> None:
    d = driver(guest)
    d.validate()
    assert d.get_power_state() == PowerState.OFF
    d.set_power_state(PowerAction.ON)
    assert d.get_power_state() == PowerState.ON
    d.set_power_state(PowerAction.RESET)
    d.set_power_state(PowerAction.CYCLE)
    assert d.get_power_state() == PowerState.ON
    d.set_power_state(PowerAction.SOFT_OFF, soft_timeout=1)
    assert d.get_power_state() == PowerState.OFF
    d.set_power_state(PowerAction.RESET)  # reset of an off guest powers it on
    d.set_power_state(PowerAction.OFF)
    assert d.get_power_state() == PowerState.OFF


def test_boot_device(guest: str) -> None:
    d = driver(guest)
    assert d.get_boot_device() == BootSetting(BootDevice.DISK, persistent=True)
    d.set_boot_device(BootSetting(BootDevice.PXE))
    assert d.get_boot_device() == BootSetting(BootDevice.PXE, persistent=True)
    with open_connection(URI) as conn:
        assert conn.boot_order(guest) == ["network", "hd"]
    d.set_boot_device(BootSetting(BootDevice.DEFAULT))  # no override: unchanged
    assert d.get_boot_device() == BootSetting(BootDevice.PXE, persistent=True)
    d.set_boot_device(BootSetting(BootDevice.DISK))
    assert d.get_boot_device().device == BootDevice.DISK  # type: ignore[union-attr]


def test_errors() -> None:
    with pytest.raises(BmcError, match="no guest named"):
        driver("missing-guest").get_power_state()
    with pytest.raises(BmcUnreachable):
        driver("g", uri="qemu+unix:///system?socket=/nonexistent").get_power_state()
    with pytest.raises(InvalidInput, match="not a libvirt QEMU URI"):
        driver("g", uri="xen:///").validate()
