"""The kind registry imports each vendor module only when asked; the fake is for tests only."""

from __future__ import annotations

import subprocess
import sys
import threading
import typing

import pytest

from provisioner import schemas
from provisioner.drivers.power import available_kinds, get_driver
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerState
from provisioner.drivers.power.fake import FakeFleet, FakePower
from provisioner.errors import BmcTimeout, InvalidInput


def test_the_registry_offers_what_the_api_accepts_and_not_the_fake() -> None:
    assert set(available_kinds()) == set(typing.get_args(schemas.BmcKind)) == {"ipmi", "redfish", "libvirt", "manual"}
    with pytest.raises(InvalidInput) as exc:
        get_driver(BmcSpec(kind="fake", address="x"))
    assert "known: ipmi, redfish, manual, libvirt" in exc.value.message


def test_vendor_libraries_are_imported_on_first_use_only() -> None:
    code = ("import sys; from provisioner.drivers.power import get_driver; "
            "from provisioner.drivers.power.base import BmcSpec; "
            "get_driver(BmcSpec(kind='manual', address='x')); assert 'sushy' not in sys.modules; "
            "get_driver(BmcSpec(kind='redfish', address='x')); assert 'sushy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_fake_power_changes_show_after_the_polls_it_is_told() -> None:
    fleet = FakeFleet()
    bmc = fleet.machine("10.0.0.9", 623)
    bmc.apply_after = 1
    drv = fleet.driver(BmcSpec(kind="fake", address="10.0.0.9", port=623))
    drv.set_power_state(PowerAction.ON)
    assert drv.get_power_state() == PowerState.OFF  # one poll: not yet
    assert fleet.driver(BmcSpec(kind="fake", address="10.0.0.9", port=623)).get_power_state() == PowerState.ON
    drv.set_boot_device(BootSetting(BootDevice.PXE, persistent=True))
    assert bmc.boot == BootSetting(BootDevice.PXE, persistent=True) == drv.get_boot_device()
    assert bmc.calls == ["set:on", "get", "get", "boot"]
    assert fleet.machine("10.0.0.10").calls == []  # another BMC, untouched


def test_fake_power_injected_failures_and_delay() -> None:
    drv = FakePower(BmcSpec(kind="fake", address="x"))
    drv.machine.failures = [BmcTimeout(bmc="x", seconds=1)]
    with pytest.raises(BmcTimeout):
        drv.get_power_state()
    assert drv.get_power_state() == PowerState.OFF  # one failure, then the machine answers
    drv.machine.apply_after = -1
    drv.set_power_state(PowerAction.ON)
    drv.get_power_state()
    drv.set_power_state(PowerAction.SOFT_OFF)  # ignored by the "OS"
    assert drv.get_power_state() == PowerState.ON


def test_fake_fleet_counts_calls_in_flight() -> None:
    fleet = FakeFleet()
    for port in (1, 2, 3):
        fleet.machine("h", port).delay = 0.3  # long enough for all three threads to be in at once
    threads = [threading.Thread(target=fleet.driver(BmcSpec(kind="fake", address="h", port=p)).get_power_state)
               for p in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fleet.max_in_flight == 3 and fleet.in_flight == 0
