"""``/api/v1/hosts/local/guests`` against the session's real libvirtd (the controller's own libvirt).

Create and delete answer 202 with a conductor task; the test follows it at ``/api/v1/tasks/{id}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner import auth, migrate
from provisioner.conductor import engine
from provisioner.db import get_engine
from provisioner.lab.libvirtd import LibvirtdHandle
from provisioner.settings import Settings
from tests.integration.virt.conftest import NET, POOL

pytestmark = pytest.mark.integration


@pytest.fixture
def api(infra: LibvirtdHandle, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    from provisioner.api.app import create_app

    settings = Settings(data_dir=tmp_path / "data", tftp_enabled=False, dhcp_enabled=False, power_sync_enabled=False,
                        log_json=False, virt_uri=infra.uri, virt_console_dir=str(infra.console_dir),
                        virt_pool=POOL, virt_network=NET)
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        token = auth.create_token(s, name="virt-it")
    engine.stop()  # tasks run against this test's database
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {token}"}


def finished(client: TestClient, auth_h: dict[str, str], accepted: Any, timeout: float = 120) -> dict[str, Any]:
    """Follow a 202's task until it ends."""
    assert accepted.status_code == 202, accepted.text
    link = accepted.json()["link"]
    assert accepted.headers["location"] == link
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = client.get(link, headers=auth_h).json()
        if task["status"] in ("succeeded", "failed", "cancelled"):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.1)


def test_guest_through_the_api(api: tuple[TestClient, dict[str, str]], infra: LibvirtdHandle, ramdisk,  # type: ignore[no-untyped-def]
                               uid: str) -> None:
    client, auth_h = api
    name = f"api-{uid}"
    body = {"name": name, "memory_mib": 128, "disks": [{"size_gib": 0.1}], "nics": [{"mac": "52:54:00:e3:00:01"}],
            "direct_boot": {"kernel": str(ramdisk.vmlinux), "initrd": str(ramdisk.initrd), "cmdline": "console=ttyS0"}}
    # kvm: refused on a host whose verdict forbids it, with the reason; nothing defined
    r = client.post("/api/v1/hosts/local/guests", json=body, headers=auth_h)
    verdict = client.get("/api/v1/hosts/local/virt", headers=auth_h).json()
    if not verdict["kvm_allowed"]:
        assert r.status_code == 422 and r.json()["error"] == "virt_refused", r.text
        assert verdict["overall"] in r.json()["message"]
        assert client.get("/api/v1/tasks", headers=auth_h).json()["count"] == 0  # refused before any task
    else:
        assert finished(client, auth_h, r)["status"] == "succeeded"
        finished(client, auth_h, client.delete(f"/api/v1/hosts/local/guests/{name}", headers=auth_h))
    body["virt_type"] = "qemu"
    r = client.post("/api/v1/hosts/local/guests", json=body, params={"dry_run": "true"}, headers=auth_h)
    assert r.status_code == 200 and r.json()["dry_run"] and "<domain type='qemu'>" in r.json()["xml"]
    assert name not in [g["name"] for g in client.get("/api/v1/hosts/local/guests", headers=auth_h).json()["data"]]
    r = client.post("/api/v1/hosts/local/guests", json=body, headers=auth_h)
    assert r.json()["kind"] == "guest-create"
    task = finished(client, auth_h, r)
    assert task["status"] == "succeeded", task["error"]
    assert task["result"]["state"] == "running" and task["result"]["disks"][0]["path"].startswith(str(infra.pool_dir))
    r = client.post("/api/v1/hosts/local/guests", json=body, headers=auth_h)
    assert r.status_code == 409  # duplicate name: refused in the request, no task
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        lines = client.get(f"/api/v1/hosts/local/guests/{name}/console", params={"lines": 5},
                           headers=auth_h).json()["lines"]
        if lines:
            break
        time.sleep(0.5)
    assert lines, "no console output"
    r = client.post(f"/api/v1/hosts/local/guests/{name}/stop", json={"timeout": 1}, headers=auth_h)
    assert r.status_code == 200 and r.json()["state"] == "shutoff"
    task = finished(client, auth_h, client.delete(f"/api/v1/hosts/local/guests/{name}", headers=auth_h))
    assert task["status"] == "succeeded" and task["result"]["reservations_released"] == ["52:54:00:e3:00:01"]
    assert client.get(f"/api/v1/hosts/local/guests/{name}", headers=auth_h).status_code == 404
