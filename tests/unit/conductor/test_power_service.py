"""The power service's own logic (caps, retries, confirmation, records) with a scripted fake driver."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from provisioner import states as S
from provisioner.conductor import power as power_mod
from provisioner.conductor.power import PowerService
from provisioner.conductor.power_sync import run_round, sync_one
from provisioner.conductor.verify import verify_host
from provisioner.db import get_engine
from provisioner.drivers.power.base import (
    BmcSpec,
    BootDevice,
    BootSetting,
    PowerState,
)
from provisioner.drivers.power.fake import FakeFleet, FakeMachine, FakePower
from provisioner.errors import BmcAuthError, BmcBusy, BmcTimeout, BmcUnreachable
from provisioner.models import Event
from tests.support.power import add_host, add_rack, get_host, power_settings


@pytest.fixture
def env(tmp_path: Path) -> Any:
    settings = power_settings(tmp_path, power_retries=3, power_concurrency=4, power_call_timeout=2.0)
    fleet = FakeFleet()
    svc = PowerService(settings, driver_factory=fleet.driver)
    svc.sleep = lambda s: None  # no real backoff waits in unit tests
    svc.confirm_interval = 0.0
    svc.confirm_timeout = 0.5
    svc.soft_off_timeout = 0.2

    class Env:
        def host(self, name: str, port: int, **kw: Any) -> tuple[int, FakeMachine]:
            hid = add_host(settings, name, kind="ipmi", port=port, password="hunter2-secret", **kw)
            return hid, fleet.machine("127.0.0.1", port)

        def events(self, hid: int) -> list[Event]:
            with Session(get_engine(settings)) as s:
                return list(s.exec(select(Event).where(Event.host_id == hid).order_by(Event.id)).all())  # type: ignore[arg-type]

    e = Env()
    e.settings, e.svc, e.fleet = settings, svc, fleet  # type: ignore[attr-defined]
    return e


def test_power_on_is_confirmed_and_recorded(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    bmc.apply_after = 2  # the BMC takes two polls to show the change
    res = env.svc.power_action(hid, "on", actor="tester")
    assert res.ok and res.power_state == "on"
    assert bmc.calls == ["set:on", "get", "get", "get"]
    host = get_host(env.settings, hid)
    assert host.power_state == "on" and host.bmc_error is None and host.bmc_reachable is True
    ev = env.events(hid)[-1]
    assert ev.event == "power" and "confirmed on" in ev.message and ev.actor == "tester"


def test_unconfirmed_change_is_a_clear_timeout(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    bmc.apply_after = 10**6
    res = env.svc.power_action(hid, "on")
    assert not res.ok and res.error == "bmc_timeout"
    assert "did not become on" in res.message
    host = get_host(env.settings, hid)
    assert host.bmc_error and host.bmc_error.startswith("bmc_timeout")
    assert env.events(hid)[-1].event == "power-error"


def test_retries_timeouts_with_backoff_then_succeeds(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    bmc.failures = [BmcTimeout(bmc="x", seconds=1), BmcBusy(bmc="x", reason="0xc0")]
    sleeps: list[float] = []
    env.svc.sleep = sleeps.append
    res = env.svc.get_power(hid)
    assert res.ok and res.attempts == 3
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0] * 1.3  # exponential (plus jitter)
    assert sleeps[0] >= env.svc.backoff_base


def test_auth_failure_is_never_retried(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    bmc.failures = [BmcAuthError(bmc="x")] * 5
    res = env.svc.power_action(hid, "on")
    assert not res.ok and res.error == "bmc_auth" and res.attempts == 1
    assert bmc.calls == ["set:on"]
    assert get_host(env.settings, hid).bmc_error.startswith("bmc_auth")  # type: ignore[union-attr]


def test_retries_are_bounded(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    bmc.failures = [BmcUnreachable(bmc="x", reason="r")] * 10
    res = env.svc.get_power(hid)
    assert not res.ok and res.error == "bmc_unreachable" and res.attempts == 4  # 1 + power_retries


def test_cycle_is_not_retried_after_timeout(env: Any) -> None:
    """A reset that timed out may have happened: retrying could reset the host twice."""
    hid, bmc = env.host("h1", 1001)
    bmc.power = PowerState.ON
    bmc.failures = [BmcTimeout(bmc="x", seconds=1)]
    res = env.svc.power_action(hid, "cycle")
    assert not res.ok and res.error == "bmc_timeout" and bmc.calls == ["set:cycle"]


def test_soft_off_falls_back_to_hard_off(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    bmc.power = PowerState.ON
    bmc.apply_after = -1  # soft-off is ignored by the "OS"
    res = env.svc.power_action(hid, "soft-off")
    assert res.ok and res.power_state == "off" and res.details["hard_off_after_soft"] is True
    assert "set:off" in bmc.calls


def test_boot_device_recorded(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    res = env.svc.set_boot_device(hid, BootSetting(BootDevice.PXE, persistent=True, uefi=True))
    assert res.ok and bmc.boot == BootSetting(BootDevice.PXE, persistent=True, uefi=True)
    assert "boot device pxe (persistent, UEFI)" in env.events(hid)[-1].message


def test_module_functions_raise_classified_errors(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hid, bmc = env.host("h1", 1001)
    monkeypatch.setitem(power_mod._services, id(env.settings), env.svc)
    bmc.failures = [BmcAuthError(bmc="x")]
    with pytest.raises(BmcAuthError):
        power_mod.power_action(hid, "on", settings=env.settings)
    # the install workflow's keyword form
    assert power_mod.set_boot_device(hid, settings=env.settings, device=BootDevice.DISK, persistent=True).ok
    assert bmc.boot == BootSetting(BootDevice.DISK, persistent=True)


def test_one_call_per_bmc_and_global_cap(env: Any) -> None:
    ids = []
    for i in range(6):
        hid, bmc = env.host(f"h{i}", 2000 + i)
        bmc.delay = 0.05
        ids.append(hid)
    # the same BMC requested from several threads at once
    same = [ids[0]] * 5
    env.svc.fan_out(same + ids, lambda h: env.svc.get_power(h))
    assert env.fleet.machine("127.0.0.1", 2000).max_in_flight == 1
    assert env.fleet.max_in_flight <= env.settings.power_concurrency


def test_rack_fan_out_reports_per_host(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rack = add_rack(env.settings, "r1")
    _ok_id, _ = env.host("a", 3001, rack_id=rack)
    _bad_id, bad = env.host("b", 3002, rack_id=rack)
    bad.failures = [BmcAuthError(bmc="x")]
    monkeypatch.setitem(power_mod._services, id(env.settings), env.svc)
    seen: list[int] = []
    results = power_mod.rack_power_action(rack, "on", settings=env.settings,
                                          progress=lambda n, total, r: seen.append(n))
    assert [r.host for r in results] == ["a", "b"]
    assert [r.ok for r in results] == [True, False]
    assert sorted(seen) == [1, 2]


def test_power_change_and_unreachable_flag_in_history(env: Any) -> None:
    hid, bmc = env.host("h1", 1001)
    assert sync_one(hid, env.settings, env.svc)
    bmc.power = PowerState.ON
    assert sync_one(hid, env.settings, env.svc)
    assert any(e.event == "power-change" and "from off to on" in e.message for e in env.events(hid))
    bmc.failures = [BmcTimeout(bmc="x", seconds=1)]
    assert not sync_one(hid, env.settings, env.svc)
    assert get_host(env.settings, hid).bmc_reachable is False
    bmc.failures = [BmcTimeout(bmc="x", seconds=1)]
    sync_one(hid, env.settings, env.svc)  # still down: flagged once, not twice
    assert [e.event for e in env.events(hid)].count("bmc-unreachable") == 1
    assert sync_one(hid, env.settings, env.svc)
    assert get_host(env.settings, hid).bmc_reachable is True
    assert env.events(hid)[-1].event == "bmc-reachable"


def test_sync_round_spreads_polls_over_the_interval(env: Any) -> None:
    stamps: list[float] = []
    for i in range(5):
        env.host(f"h{i}", 4000 + i)

    class Stamp(FakePower):
        def get_power_state(self) -> PowerState:
            stamps.append(time.monotonic())
            return PowerState.OFF

    env.svc.driver_factory = lambda spec: Stamp(spec, fleet=env.fleet)
    t0 = time.monotonic()
    n = run_round(env.settings, threading.Event(), interval=0.5, service=env.svc)
    assert n == 5
    # 0.5 s / 5 hosts: host i is polled no earlier than i * 0.1 s after the start
    for i, stamp in enumerate(sorted(stamps)):
        assert stamp - t0 >= i * 0.1 - 0.01


def test_verify_moves_host_through_the_lifecycle(env: Any) -> None:
    good, _ = env.host("good", 5001)
    bad, bad_bmc = env.host("bad", 5002)
    bad_bmc.failures = [BmcAuthError(bmc="x")]
    assert verify_host(good, settings=env.settings, service=env.svc).state == S.AVAILABLE
    h = verify_host(bad, settings=env.settings, service=env.svc)
    assert h.state == S.VERIFY_FAILED and "bmc_auth" in (h.last_error or "")
    assert [e.to_state for e in env.events(bad) if e.to_state] == [S.VERIFYING, S.VERIFY_FAILED]


def test_spec_carries_decrypted_password_but_never_shows_it(env: Any) -> None:
    hid, _ = env.host("h1", 1001)
    spec = env.svc.spec_for(get_host(env.settings, hid))
    assert isinstance(spec, BmcSpec) and spec.password == "hunter2-secret"
    assert "hunter2" not in repr(spec) and "hunter2" not in spec.label


def test_power_sync_start_and_stop(env: Any) -> None:
    from provisioner.conductor import power_sync

    hid, bmc = env.host("h1", 1001)
    bmc.power = PowerState.ON
    assert power_sync.start(env.settings, service=env.svc) is not None  # disabled in these settings: a no-op
    settings = env.settings.model_copy(update={"power_sync_enabled": True, "power_sync_interval": 0.2})
    stop = power_sync.start(settings, service=env.svc)
    try:
        deadline = time.monotonic() + 3
        while get_host(env.settings, hid).power_state != "on":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        t0 = time.monotonic()
        stop()
        assert time.monotonic() - t0 < 1.0
