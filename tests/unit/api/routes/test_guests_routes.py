"""``/api/v1/hosts/{host}/guests`` and ``/virt`` over HTTP, with the in-memory hypervisor behind the conductor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner import auth, migrate
from provisioner.conductor import engine
from provisioner.db import get_engine
from provisioner.drivers.virt import fake
from provisioner.drivers.virt import preflight as pf
from provisioner.models import Host
from provisioner.settings import Settings

TREES = Path(__file__).resolve().parents[3] / "support" / "virt_trees"
BODY: dict[str, Any] = {"name": "g1", "memory_mib": 256, "virt_type": "qemu", "disks": [{"size_gib": 1}],
                        "nics": [{"mac": "52:54:00:ab:00:01"}]}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    from provisioner.api.app import create_app

    fake.reset()
    engine.stop()
    uri = f"fake:///kvm1-{uuid.uuid4().hex[:6]}"
    settings = Settings(data_dir=tmp_path, tftp_enabled=False, dhcp_enabled=False, power_sync_enabled=False,
                        log_json=False, virt_uri="fake:///local", virt_pool_dir=str(tmp_path / "pool"))
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        token = auth.create_token(s, name="guests-api")
        s.add(Host(name="kvm1", ip_address="10.0.0.5", bmc_kind="manual", bmc_options={"virt_uri": uri}))
        s.commit()
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, uri
    fake.reset()


def wait(client: TestClient, task: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        t: dict[str, Any] = client.get(task["link"]).json()
        if t["status"] in ("succeeded", "failed", "cancelled"):
            return t
        assert time.monotonic() < deadline, t
        time.sleep(0.02)


def task_count(client: TestClient) -> int:
    return int(client.get("/api/v1/tasks").json()["count"])


def test_create_answers_202_with_the_task(api: tuple[TestClient, str]) -> None:
    client, uri = api
    r = client.post("/api/v1/hosts/kvm1/guests", json=BODY, params={"dry_run": "true"})
    assert r.status_code == 200 and r.json()["dry_run"] is True and "<name>g1</name>" in r.json()["xml"]
    assert task_count(client) == 0 and fake.fake_host(uri).guests == {}
    r = client.post("/api/v1/hosts/kvm1/guests", json=BODY)
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["kind"] == "guest-create" and task["status"] in ("pending", "running", "succeeded")
    assert task["link"] == f"/api/v1/tasks/{task['id']}" == r.headers["location"]
    assert task["params"]["guest"] == "g1" and task["params"]["actor"] == "token:guests-api"
    done = wait(client, task)
    assert done["status"] == "succeeded" and done["progress"] == 100
    assert done["result"]["state"] == "running" and done["result"]["nics"][0]["mac"] == "52:54:00:ab:00:01"
    assert [g["name"] for g in client.get("/api/v1/hosts/kvm1/guests").json()["data"]] == ["g1"]
    events = client.get("/api/v1/hosts/kvm1/events").json()["data"]
    assert {"guest-create", "guest-created"} <= {e["event"] for e in events}
    assert all("guest g1" in e["message"] for e in events if e["event"].startswith("guest-"))


def test_failing_checks_are_4xx_and_queue_nothing(api: tuple[TestClient, str]) -> None:
    client, uri = api
    fake.fake_host(uri).report = pf.evaluate(pf.collect_facts(TREES / "software_kvm_pvm"), {"domain_types": ["qemu"]})
    r = client.post("/api/v1/hosts/kvm1/guests", json={**BODY, "virt_type": "kvm"})
    assert r.status_code == 422 and r.json()["error"] == "virt_refused" and pf.SOFTWARE_KVM_ONLY in r.json()["message"]
    r = client.post("/api/v1/hosts/kvm1/guests", json={**BODY, "nics": [{"network": "nope"}]})
    assert r.status_code == 422 and "unknown network 'nope'" in r.json()["message"]
    r = client.post("/api/v1/hosts/kvm1/guests", json={**BODY, "name": "bad name"})
    assert r.status_code == 422
    r = client.post("/api/v1/hosts/nope/guests", json=BODY)
    assert r.status_code == 404
    assert task_count(client) == 0
    assert wait(client, client.post("/api/v1/hosts/kvm1/guests", json=BODY).json())["status"] == "succeeded"
    r = client.post("/api/v1/hosts/kvm1/guests", json=BODY)
    assert r.status_code == 409 and "already exists" in r.json()["message"]
    assert task_count(client) == 1


def test_a_failed_create_keeps_the_error_code(api: tuple[TestClient, str]) -> None:
    client, uri = api
    fake.fake_host(uri).fail_at = "define domain"
    done = wait(client, client.post("/api/v1/hosts/kvm1/guests", json=BODY).json())
    assert done["status"] == "failed" and "injected failure" in done["error"]
    assert done["result"]["error"]["error"] == "virt_error"
    assert client.get("/api/v1/hosts/kvm1/guests").json()["count"] == 0


def test_delete_answers_202_and_quick_calls_answer_directly(api: tuple[TestClient, str]) -> None:
    client, uri = api
    assert wait(client, client.post("/api/v1/hosts/kvm1/guests", json=BODY).json())["status"] == "succeeded"
    fake.fake_host(uri).console["g1"] = ["a", "b", "c"]
    assert client.get("/api/v1/hosts/kvm1/guests/g1").json()["memory_mib"] == 256
    r = client.post("/api/v1/hosts/kvm1/guests/g1/stop", json={"timeout": 1})
    assert r.status_code == 200 and r.json() == {"name": "g1", "stopped": "shutdown", "state": "shutoff"}
    assert client.post("/api/v1/hosts/kvm1/guests/g1/start").json()["state"] == "running"
    assert client.post("/api/v1/hosts/kvm1/guests/g1/reboot").json()["state"] == "running"
    assert client.get("/api/v1/hosts/kvm1/guests/g1/console", params={"lines": 2}).json()["lines"] == ["b", "c"]
    assert client.delete("/api/v1/hosts/kvm1/guests/nope").status_code == 404
    r = client.delete("/api/v1/hosts/kvm1/guests/g1", params={"volumes": "false"})
    assert r.status_code == 202 and r.json()["kind"] == "guest-delete" and r.json()["params"]["volumes"] is False
    done = wait(client, r.json())
    assert done["status"] == "succeeded" and done["result"]["reservations_released"] == ["52:54:00:ab:00:01"]
    assert client.get("/api/v1/hosts/kvm1/guests/g1").status_code == 404


def test_virt_report_is_measured_then_stored(api: tuple[TestClient, str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _uri = api
    calls: list[str] = []
    real = pf.collect_facts

    def remote(target: str, **_kw: Any) -> dict[str, Any]:
        calls.append(target)
        return real(TREES / "intel_ept_nested")

    monkeypatch.setattr(pf, "remote_facts", remote)
    first = client.get("/api/v1/hosts/kvm1/virt").json()
    assert first["host"] == "kvm1" and first["overall"] == pf.HARDWARE_KVM and calls == ["root@10.0.0.5"]
    assert client.get("/api/v1/hosts/kvm1/virt").json()["checked_at"] == first["checked_at"] and len(calls) == 1
    assert client.get("/api/v1/hosts/kvm1/virt", params={"refresh": "true"}).json()["overall"] == pf.HARDWARE_KVM
    assert len(calls) == 2
    assert client.get("/api/v1/hosts/nope/virt").status_code == 404
