"""Redfish through sushy-tools' emulator and IPMI through virtualbmc, both in front of a
libvirt test:///default domain: power changes show in the domain's state, boot device
changes in its XML."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from provisioner.conductor import power as power_mod
from provisioner.conductor.power import PowerService
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerState
from provisioner.drivers.power.redfish import RedfishPower
from provisioner.errors import BmcAuthError, BmcUnreachable
from provisioner.settings import Settings
from tests.support.power import SushyEmulator, VirtualBmc, add_host, get_host

pytestmark = pytest.mark.integration


def eventually(check: Any, timeout: float = 3.0) -> bool:
    """The peers publish the domain's state every 50 ms: give them a moment."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _boot_order(xml: str) -> dict[str, str]:
    """device kind -> boot order, from per-device <boot order=.../> elements."""
    out = {}
    for kind in ("interface", "disk"):
        m = re.search(rf"<{kind}\b.*?</{kind}>", xml, re.S)
        if m:
            order = re.search(r"<boot order='(\d+)'", m.group(0))
            if order:
                out[kind] = order.group(1)
    return out


def test_redfish_power_and_boot_through_sushy_emulator(settings: Settings, service: PowerService,
                                                       sushy: SushyEmulator) -> None:
    hid = add_host(settings, "rf1", kind="redfish", port=sushy.port, username=sushy.username,
                   password=sushy.password, options={"scheme": "http"})  # the emulator serves plain HTTP here
    assert sushy.domain()["active"] is True  # the test driver's domain starts running
    res = power_mod.power_action(hid, "off", settings=settings)
    assert res.ok and res.power_state == "off"
    assert eventually(lambda: sushy.domain()["active"] is False)
    res = power_mod.set_boot_device(hid, BootSetting(BootDevice.PXE), settings=settings)
    assert res.ok
    assert eventually(lambda: _boot_order(sushy.domain()["inactive_xml"]).get("interface") == "1")
    res = power_mod.power_action(hid, "on", settings=settings)
    assert res.ok and eventually(lambda: sushy.domain()["active"] is True)
    res = power_mod.power_action(hid, "cycle", settings=settings)
    assert res.ok and res.power_state == "on"
    assert power_mod.set_boot_device(hid, BootSetting(BootDevice.DISK, persistent=True), settings=settings).ok
    assert eventually(lambda: _boot_order(sushy.domain()["inactive_xml"]).get("disk") == "1")
    assert get_host(settings, hid).power_state == "on"


def test_redfish_system_discovery_and_errors(sushy: SushyEmulator) -> None:
    base: dict[str, Any] = {"kind": "redfish", "address": "127.0.0.1", "port": sushy.port,
                            "username": sushy.username, "options": {"scheme": "http"}, "timeout": 5.0}
    d = RedfishPower(BmcSpec(password=sushy.password, **base))
    assert d.get_power_state() in (PowerState.ON, PowerState.OFF)
    system_id = d._system.identity
    by_id = RedfishPower(BmcSpec(password=sushy.password, **{**base, "options": {"scheme": "http",
                                                                                  "system_id": system_id}}))
    assert by_id.get_power_state() == d.get_power_state()
    with pytest.raises(BmcAuthError) as err:
        RedfishPower(BmcSpec(password="wrong-password-x", **base)).get_power_state()
    assert "wrong-password-x" not in str(err.value)
    # TLS verification is on by default: an https URL to a plain-HTTP server fails closed
    with pytest.raises(BmcUnreachable):
        RedfishPower(BmcSpec(password=sushy.password, **{**base, "options": {}})).get_power_state()


def test_ipmi_through_virtualbmc(settings: Settings, service: PowerService, vbmc: VirtualBmc) -> None:
    # virtualbmc is a pyghmi Bmc: it answers cipher suite 3 only (docs/field-notes.md, "BMC simulators").
    hid = add_host(settings, "vm1", port=vbmc.port, username=vbmc.username, password=vbmc.password,
                   options={"cipher_suite": 3})
    assert vbmc.domain()["active"] is False
    res = power_mod.power_action(hid, "on", settings=settings)
    assert res.ok and res.power_state == "on" and eventually(lambda: vbmc.domain()["active"] is True)
    assert power_mod.set_boot_device(hid, BootSetting(BootDevice.PXE, persistent=True), settings=settings).ok
    assert eventually(lambda: "<boot dev='network'/>" in vbmc.domain()["inactive_xml"])
    res = power_mod.power_action(hid, "off", settings=settings)
    assert res.ok and eventually(lambda: vbmc.domain()["active"] is False)

