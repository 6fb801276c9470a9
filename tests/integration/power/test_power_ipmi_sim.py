"""IPMI against OpenIPMI's ipmi_sim: what prov does is confirmed independently by ipmitool
and by the chassis-control script's state files."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlmodel import Session, select

from provisioner.conductor import power as power_mod
from provisioner.conductor.power import PowerService
from provisioner.conductor.power_sync import sync_one
from provisioner.db import get_engine
from provisioner.drivers.power.base import BootDevice, BootSetting
from provisioner.errors import BmcAuthError
from provisioner.models import Event
from provisioner.settings import Settings
from tests.support.power import IpmiSim, add_host, add_rack, free_udp_port, get_host

pytestmark = pytest.mark.integration

SUITE3 = {"cipher_suite": 3}  # ipmi_sim offers no suite 17 (docs/field-notes.md, "BMC simulators")


def events(settings: Settings, host_id: int) -> list[Event]:
    with Session(get_engine(settings)) as s:
        return list(s.exec(select(Event).where(Event.host_id == host_id).order_by(Event.id)).all())  # type: ignore[arg-type]


def host_for(settings: Settings, sim: IpmiSim, name: str = "node1", **kw: Any) -> int:
    return add_host(settings, name, port=sim.port, username=sim.username, password=sim.password,
                    options=SUITE3, **kw)


def test_power_on_off_cycle_confirmed_by_ipmitool(settings: Settings, service: PowerService,
                                                   ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    hid = host_for(settings, sim)
    assert sim.ipmitool_power() == "off"

    res = power_mod.power_action(hid, "on", settings=settings)
    assert res.ok and res.power_state == "on"
    assert sim.ipmitool_power() == "on" and sim.state("power") == "1"

    res = power_mod.power_action(hid, "cycle", settings=settings)
    assert res.ok and res.power_state == "on"
    assert sim.log()[-1] == "reset 1"  # on -> pyghmi "boot" = chassis reset

    res = power_mod.power_action(hid, "off", settings=settings)
    assert res.ok and res.power_state == "off"
    assert sim.ipmitool_power() == "off" and sim.state("power") == "0"

    res = power_mod.power_action(hid, "cycle", settings=settings)  # off -> cycle = power on
    assert res.ok and sim.ipmitool_power() == "on"

    status = power_mod.get_power(hid, settings=settings)
    assert status.ok and status.power_state == "on"
    host = get_host(settings, hid)
    assert host.power_state == "on" and host.bmc_error is None
    assert [e.event for e in events(settings, hid)].count("power") == 4


def test_soft_off_then_hard_off_when_the_os_ignores_it(settings: Settings, service: PowerService,
                                                       ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    sim.set_state("power", "1")
    hid = host_for(settings, sim)
    res = power_mod.power_action(hid, "soft-off", settings=settings)
    # ipmi_sim hands "shutdown" to the chassis script, which (like a hung OS) ignores it
    assert res.ok and res.power_state == "off" and res.details.get("hard_off_after_soft")
    assert sim.log() == ["shutdown 1", "power 0"]


def test_boot_device_confirmed_by_chassis_state_and_ipmitool(settings: Settings, service: PowerService,
                                                             ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    hid = host_for(settings, sim)
    assert power_mod.set_boot_device(hid, BootSetting(BootDevice.PXE), settings=settings).ok
    assert sim.state("boot") == "pxe"
    assert "Force PXE" in sim.ipmitool("chassis", "bootparam", "get", "5").stdout
    res = power_mod.set_boot_device(hid, BootSetting(BootDevice.DISK, persistent=True, uefi=True),
                                    settings=settings)
    assert res.ok
    # ipmi_sim passes only pxe|default to the chassis script, and keeps the device
    # selector (not the persistent/UEFI flags) for ipmitool to read back.
    assert sim.state("boot") == "default"
    assert "Hard-Drive" in sim.ipmitool("chassis", "bootparam", "get", "5").stdout


def test_wrong_password_is_an_auth_error_without_retries(settings: Settings, service: PowerService,
                                                         ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    hid = add_host(settings, "node1", port=sim.port, username="admin", password="not-the-password",
                   options=SUITE3)
    calls = {"n": 0}
    factory = service.driver_factory

    def counting(spec: Any) -> Any:
        calls["n"] += 1
        return factory(spec)

    service.driver_factory = counting
    with pytest.raises(BmcAuthError):
        power_mod.power_action(hid, "on", settings=settings)
    assert calls["n"] == 2  # one validate() + exactly one attempt: no retry
    res = service.get_power(hid)
    assert res.error == "bmc_auth" and res.attempts == 1
    assert sim.state("power") is None  # nothing reached the chassis
    host = get_host(settings, hid)
    assert host.bmc_error is not None and host.bmc_error.startswith("bmc_auth")
    assert events(settings, hid)[-1].event == "power-error"


def test_silent_bmc_times_out_within_the_bound(settings: Settings, service: PowerService) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # receives, never answers
    silent.bind(("127.0.0.1", 0))
    hid = add_host(settings, "ghost", port=silent.getsockname()[1], password="pw-0123456789",
                   options={**SUITE3, "timeout": 1.0})
    t0 = time.monotonic()
    try:
        res = service.get_power(hid)
    finally:
        silent.close()
    elapsed = time.monotonic() - t0
    # 2 attempts x 1 s bound + one backoff (0.5-0.75 s) + slack; pyghmi alone would block ~30 s
    assert res.error == "bmc_timeout" and res.attempts == 2
    assert elapsed < 2 * 1.0 + 0.75 + 1.0
    assert get_host(settings, hid).bmc_error.startswith("bmc_timeout")  # type: ignore[union-attr]


def test_simulator_killed_mid_operation_leaves_a_clear_error(settings: Settings, service: PowerService,
                                                             ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    hid = host_for(settings, sim)
    # The machine ignores the request (hold), so the service keeps polling for
    # confirmation; then the BMC dies under it.
    sim.set_state("hold", "1")
    service.confirm_timeout = 2.0
    killer = threading.Timer(0.8, sim.kill)
    killer.start()
    try:
        res = service.power_action(hid, "on")
    finally:
        killer.join()
    assert sim.log() == ["held power 1"]
    # the dead simulator's port answers ICMP port unreachable: said as such, not as a timeout
    assert not res.ok and res.error == "bmc_unreachable"
    host = get_host(settings, hid)
    assert host.bmc_error is not None and "bmc_unreachable" in host.bmc_error and "port unreachable" in host.bmc_error
    last = events(settings, hid)[-1]
    assert last.event == "power-error" and "power on failed" in last.message


def test_rack_bulk_power_and_status(settings: Settings, service: PowerService,
                                    ipmi_sim: Callable[..., IpmiSim]) -> None:
    rack = add_rack(settings, "r1")
    service.backoff_base = 0.05  # the dead BMC's one retry need not wait
    sims = [ipmi_sim() for _ in range(5)]
    for i, sim in enumerate(sims):
        host_for(settings, sim, name=f"n{i}", rack_id=rack)
    add_host(settings, "n9-dead", port=free_udp_port(), password="pw-0123456789",
             options={**SUITE3, "timeout": 0.5}, rack_id=rack)
    results = power_mod.rack_power_action(rack, "on", settings=settings)
    assert [r.ok for r in results] == [True] * 5 + [False]
    assert results[-1].error == "bmc_unreachable"  # a closed port: ICMP port unreachable
    assert all(s.ipmitool_power() == "on" for s in sims)
    status = power_mod.rack_get_power(rack, settings=settings)
    assert [r.power_state for r in status[:5]] == ["on"] * 5
    assert power_mod.rack_set_boot_device(rack, BootSetting(BootDevice.PXE), settings=settings)[0].ok
    assert all(s.state("boot") == "pxe" for s in sims)


def test_power_sync_flags_and_clears_an_unanswering_bmc(settings: Settings, service: PowerService,
                                                        ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    hid = host_for(settings, sim)
    assert sync_one(hid, settings, service)
    sim.set_state("power", "1")  # someone pressed the button
    assert sync_one(hid, settings, service)
    assert any(e.event == "power-change" for e in events(settings, hid))
    sim.kill()
    assert not sync_one(hid, settings, service)
    assert get_host(settings, hid).bmc_reachable is False
    assert events(settings, hid)[-1].event == "bmc-unreachable"
    sim.start()  # same port, same config
    assert sync_one(hid, settings, service)
    host = get_host(settings, hid)
    assert host.bmc_reachable is True and host.bmc_error is None
    assert events(settings, hid)[-1].event == "bmc-reachable"


def test_bmc_restart_under_a_cached_session(settings: Settings, service: PowerService,
                                            ipmi_sim: Callable[..., IpmiSim]) -> None:
    """A BMC that restarted forgets our session and drops its packets silently: a read
    must start over with a fresh login at once, not wait out pyghmi's retries."""
    sim = ipmi_sim()
    hid = host_for(settings, sim)
    assert service.get_power(hid).ok  # the session is now cached in a worker
    sim.kill()
    sim.start()
    t0 = time.monotonic()
    res = service.get_power(hid)
    assert res.ok and res.attempts == 1
    assert time.monotonic() - t0 < 2.5
