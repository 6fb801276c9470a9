"""Racks, profiles, tasks and events over REST on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from provisioner.db import get_engine
from provisioner.models import Task, utcnow
from tests.integration.api.conftest import host_body

pytestmark = pytest.mark.integration


def test_rack_crud(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/racks", json={"name": "R1", "site": "dc1", "size_u": 42})
    assert r.status_code == 201 and r.json()["name"] == "r1"
    assert client.post("/api/v1/racks", json={"name": "r1"}).status_code == 409
    assert client.post("/api/v1/racks", json={"name": "r 1"}).json()["field"] == "name"
    assert client.post("/api/v1/racks", json={"name": "r2", "size_u": 0}).json()["field"] == "size_u"
    assert client.patch("/api/v1/racks/r1", json={"site": "dc2"}).json()["site"] == "dc2"
    assert client.get("/api/v1/racks").json()["count"] == 1
    assert client.get("/api/v1/racks/nope").status_code == 404
    client.post("/api/v1/hosts", json=host_body(rack="r1", u_position=40)).raise_for_status()
    assert client.get("/api/v1/racks/r1").json()["host_count"] == 1
    assert client.patch("/api/v1/racks/r1", json={"size_u": 20}).json()["field"] == "size_u"
    r = client.delete("/api/v1/racks/r1")
    assert r.status_code == 409 and r.json()["host_count"] == 1
    client.delete("/api/v1/hosts/web01").raise_for_status()
    assert client.delete("/api/v1/racks/r1").status_code == 204
    assert client.get("/api/v1/racks").json()["count"] == 0


def test_profile_crud(client) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "ubuntu-22.04", "os_family": "ubuntu", "install_method": "autoinstall",
            "kernel_url": "http://mirror/linux", "params": {"locale": "en_US"}, "playbooks": ["site.yml"]}
    r = client.post("/api/v1/profiles", json=body)
    assert r.status_code == 201, r.text
    assert client.post("/api/v1/profiles", json=body).status_code == 409
    assert client.post("/api/v1/profiles", json={"name": "x", "install_method": "floppy"}).json()["field"] == \
        "install_method"
    r = client.patch("/api/v1/profiles/ubuntu-22.04", json={"kernel_args": "console=ttyS0"})
    assert r.json()["kernel_args"] == "console=ttyS0" and r.json()["params"] == {"locale": "en_US"}
    client.post("/api/v1/hosts", json=host_body(profile="ubuntu-22.04")).raise_for_status()
    assert client.delete("/api/v1/profiles/ubuntu-22.04").status_code == 409
    client.patch("/api/v1/hosts/web01", json={"profile": None}).raise_for_status()
    assert client.delete("/api/v1/profiles/ubuntu-22.04").status_code == 204


def test_tasks_and_events_read_only(client, settings) -> None:  # type: ignore[no-untyped-def]
    h = client.post("/api/v1/hosts", json=host_body()).json()
    with Session(get_engine(settings)) as s:
        s.add(Task(kind="verify", host_id=h["id"], status="succeeded"))
        s.add(Task(kind="install", host_id=h["id"]))
        s.commit()
    j = client.get("/api/v1/tasks", params={"host": "web01"}).json()
    assert j["count"] == 2 and j["data"][0]["kind"] == "install"
    assert client.get("/api/v1/tasks", params={"status": "succeeded"}).json()["count"] == 1
    tid = j["data"][0]["id"]
    assert client.get(f"/api/v1/tasks/{tid}").json()["kind"] == "install"
    assert client.get("/api/v1/tasks/999999").status_code == 404
    assert client.post("/api/v1/tasks", json={}).status_code == 405
    assert client.get("/api/v1/events", params={"host": "web01"}).json()["count"] == 1
    assert client.get("/api/v1/events", params={"host": "ghost"}).status_code == 404


def test_health_and_metrics(client, anon, settings) -> None:  # type: ignore[no-untyped-def]
    assert anon.get("/healthz").json() == {"status": "ok"}
    r = anon.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["schema"]
    assert anon.get("/metrics").status_code == 401
    h = client.post("/api/v1/hosts", json=host_body()).json()
    client.post("/api/v1/hosts/web01/transition", json={"event": "maintain"}).raise_for_status()
    now = utcnow()
    with Session(get_engine(settings)) as s:
        s.add(Task(kind="verify", host_id=h["id"], status="succeeded", started_at=now - timedelta(seconds=3),
                   finished_at=now))
        s.commit()
    text = client.get("/metrics").text
    assert 'prov_task_duration_seconds_count{kind="verify",status="succeeded"} 1.0' in text
    assert 'prov_task_duration_seconds_bucket{kind="verify",le="5.0",status="succeeded"} 1.0' in text
    text = client.get("/metrics").text  # a second scrape does not count the task twice
    assert 'prov_task_duration_seconds_count{kind="verify",status="succeeded"} 1.0' in text
    assert 'prov_hosts{state="maintenance"} 1.0' in text
    assert 'prov_hosts{state="enrolled"} 0.0' in text
    assert 'prov_http_requests_total{method="POST",route="/api/v1/hosts",status="201"} 1.0' in text
    assert "prov_http_request_duration_seconds_bucket" in text
    assert "prov_task_duration_seconds" in text
