"""The power routes over a scripted fake driver: status codes, bodies, rack tasks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner import auth
from provisioner.api.app import create_app
from provisioner.conductor import engine
from provisioner.conductor import power as power_mod
from provisioner.conductor.power import PowerService
from provisioner.db import get_engine
from provisioner.drivers.power.base import BootDevice, BootSetting, PowerState
from provisioner.drivers.power.fake import FakeFleet, FakeMachine
from provisioner.errors import BmcAuthError
from tests.support.power import add_host, add_rack, power_settings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Any]:
    settings = power_settings(tmp_path, power_retries=0)
    fleet = FakeFleet()
    svc = PowerService(settings, driver_factory=fleet.driver)
    svc.confirm_interval = 0.0
    svc.confirm_timeout = 0.3
    power_mod._services[id(settings)] = svc
    engine.stop()
    engine.start(settings)
    with Session(get_engine(settings)) as s:
        token = auth.create_token(s, name="t")
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {token}"
    rack = add_rack(settings, "r1")

    def host(name: str, port: int) -> FakeMachine:
        add_host(settings, name, port=port, password="pw-secret-9", rack_id=rack)
        return fleet.machine("127.0.0.1", port)

    client.host = host  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        power_mod._services.pop(id(settings), None)
        engine.stop()


def test_host_power_round_trip(api: Any) -> None:
    bmc = api.host("h1", 7001)
    r = api.post("/api/v1/hosts/h1/power", json={"action": "on"})
    assert r.status_code == 200 and r.json()["power_state"] == "on" and r.json()["ok"] is True
    r = api.get("/api/v1/hosts/h1/power")
    assert r.status_code == 200 and r.json()["power_state"] == "on"
    r = api.put("/api/v1/hosts/h1/boot-device", json={"device": "pxe", "persistent": True, "uefi": True})
    assert r.status_code == 200 and bmc.boot == BootSetting(BootDevice.PXE, persistent=True, uefi=True)
    r = api.post("/api/v1/hosts/h1/verify")
    assert r.status_code == 200 and r.json()["state"] == "available"


def test_errors_map_to_status_codes(api: Any) -> None:
    bmc = api.host("h1", 7001)
    assert api.post("/api/v1/hosts/nope/power", json={"action": "on"}).status_code == 404
    assert api.post("/api/v1/hosts/h1/power", json={"action": "explode"}).status_code == 422
    assert api.put("/api/v1/hosts/h1/boot-device", json={"device": "floppy"}).status_code == 422
    bmc.failures = [BmcAuthError(bmc="127.0.0.1:7001")]
    r = api.post("/api/v1/hosts/h1/power", json={"action": "off"})
    assert r.status_code == 502 and r.json()["error"] == "bmc_auth"
    bmc.apply_after = 10**6
    r = api.post("/api/v1/hosts/h1/power", json={"action": "on"})
    assert r.status_code == 504 and r.json()["error"] == "bmc_timeout"
    assert "pw-secret-9" not in r.text
    assert api.post("/api/v1/hosts/h1/power", json={"action": "on"}, headers={"Authorization": ""}).status_code == 401


def test_rack_power_as_task_and_inline(api: Any) -> None:
    a = api.host("a", 7001)
    b = api.host("b", 7002)
    b.failures = [BmcAuthError(bmc="x")]
    r = api.post("/api/v1/racks/r1/power", json={"action": "on"})
    assert r.status_code == 200 and "task_id" in r.json()
    engine.wait(r.json()["task_id"], timeout=10)
    task = api.get(f"/api/v1/tasks/{r.json()['task_id']}").json()
    assert task["status"] == "succeeded" and task["progress"] == 100
    assert task["result"]["failed"] == 1 and [x["ok"] for x in task["result"]["results"]] == [True, False]
    assert a.power == PowerState.ON
    r = api.get("/api/v1/racks/r1/power")
    assert r.status_code == 200 and r.json()["count"] == 2 and r.json()["failed"] == 0
    r = api.put("/api/v1/racks/r1/boot-device", json={"device": "disk"})
    assert r.status_code == 200 and r.json()["failed"] == 0 and a.boot == BootSetting(BootDevice.DISK)
    r = api.post("/api/v1/racks/r1/power", json={"action": "off", "background": False})
    assert r.status_code == 200 and r.json()["failed"] == 0 and a.power == PowerState.OFF
