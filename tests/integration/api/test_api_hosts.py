"""Hosts over REST on SQLite and PostgreSQL: CRUD, bad input, secrets, listing."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text
from sqlmodel import Session

from provisioner.db import get_engine
from tests.integration.api.conftest import host_body

pytestmark = pytest.mark.integration


def _count(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.get("/api/v1/hosts").json()["count"])


def test_create_host_issue_shape(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/racks", json={"name": "r1"}).raise_for_status()
    client.post("/api/v1/profiles", json={"name": "debian12"}).raise_for_status()
    body = {"name": "web01", "rack": "r1", "nics": [{"mac": "52:54:00:12:34:56", "boot": True}],
            "bmc": {"kind": "ipmi", "address": "10.0.0.21", "port": 623, "username": "admin", "password": "pw-xyz1"},
            "profile": "debian12", "roles": ["docker"]}
    r = client.post("/api/v1/hosts", json=body)
    assert r.status_code == 201, r.text
    h = r.json()
    assert h["name"] == "web01" and h["rack"] == "r1" and h["profile"] == "debian12"
    assert h["state"] == "enrolled" and h["roles"] == ["docker"]
    assert h["nics"] == [{"mac": "52:54:00:12:34:56", "name": "", "boot": True, "ip": None, "address": None,
                          "gateway": None, "nameservers": [], "search": [], "mtu": None}]
    assert h["bmc"]["password_set"] is True
    assert "password" not in h["bmc"] and "pw-xyz1" not in r.text
    assert client.get("/api/v1/hosts/web01").json()["id"] == h["id"]
    assert client.get(f"/api/v1/hosts/{h['id']}").json()["name"] == "web01"
    hist = client.get("/api/v1/hosts/web01/events").json()
    assert hist["data"][0]["event"] == "enroll" and hist["data"][0]["actor"] == "token:tester"


def test_password_encrypted_at_rest(client, settings, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("DEBUG")
    secret = "Plaintext-Pw-9876"
    body = host_body()
    body["bmc"]["password"] = secret
    assert client.post("/api/v1/hosts", json=body).status_code == 201
    with Session(get_engine(settings)) as s:
        enc = s.execute(text("SELECT bmc_password_enc FROM host")).scalar_one()
        dump = " ".join(str(v) for row in s.execute(text("SELECT * FROM host")).all() for v in row)
    assert secret not in dump
    assert enc.startswith("gAAAA")  # Fernet token (version byte 0x80, base64)
    from provisioner.secret_store import decrypt

    assert decrypt(enc, settings) == secret
    # the password never comes back, in any endpoint
    for path in ("/api/v1/hosts", "/api/v1/hosts/web01", "/api/v1/hosts/web01/events", "/api/v1/events"):
        assert secret not in client.get(path).text
    # write-only update; '' clears
    # a 422 echoing the body must not echo the password either
    bad = host_body(name="-bad")
    bad["bmc"]["password"] = secret
    assert secret not in client.post("/api/v1/hosts", json=bad).text
    r = client.patch("/api/v1/hosts/web01", json={"bmc": {"password": ""}})
    assert r.json()["bmc"]["password_set"] is False
    assert secret not in caplog.text


def test_mac_normalised(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/hosts", json=host_body(mac="52-54-00-AB-CD-EF"))
    assert r.json()["nics"][0]["mac"] == "52:54:00:ab:cd:ef"
    # the same MAC in another notation is a duplicate
    r = client.post("/api/v1/hosts", json=host_body(name="web02", mac="5254.00ab.cdef",
                                                    bmc={"address": "10.0.0.22"}))
    assert r.status_code == 409 and r.json()["field"] == "nics[0].mac"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": "-bad"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": "under_score"}, "name"),
        ({"name": "12345"}, "name"),
        ({"name": 5}, "name"),
        ({"nics": [{"mac": "52:54:00:12:34"}]}, "nics[0].mac"),
        ({"nics": [{"mac": "zz:54:00:12:34:56"}]}, "nics[0].mac"),
        ({"nics": [{"mac": "52:54:00:12:34:56", "ip": "10.0.0.300"}]}, "nics[0].ip"),
        ({"bmc": {"address": "10.0.0.1", "port": 70000}}, "bmc.port"),
        ({"bmc": {"address": "not an address"}}, "bmc.address"),
        ({"bmc": {"kind": "telnet"}}, "bmc.kind"),
        ({"roles": "docker"}, "roles"),
        ({"u_position": "high"}, "u_position"),
        ({"rack": "nope"}, "rack"),
        ({"profile": "nope"}, "profile"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_names_field_and_writes_nothing(client, patch, field) -> None:  # type: ignore[no-untyped-def]
    body = host_body()
    body.update(patch)
    r = client.post("/api/v1/hosts", json=body)
    assert r.status_code == 422, r.text
    j = r.json()
    assert j["error"] in ("invalid_input",) and j["field"] == field, j
    assert field in j["message"]
    assert _count(client) == 0


def test_duplicate_mac_within_body(client) -> None:  # type: ignore[no-untyped-def]
    body = host_body()
    body["nics"] = [{"mac": "52:54:00:00:00:01"}, {"mac": "52-54-00-00-00-01"}]
    r = client.post("/api/v1/hosts", json=body)
    assert r.status_code == 422 and r.json()["field"] == "nics"


def test_duplicates_409(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/api/v1/hosts", json=host_body()).status_code == 201
    r = client.post("/api/v1/hosts", json=host_body(mac="52:54:00:00:00:99"))
    assert r.status_code == 409 and r.json()["field"] == "name"
    r = client.post("/api/v1/hosts", json=host_body(name="web02"))
    assert r.status_code == 409 and r.json()["field"] == "nics[0].mac" and r.json()["host"] == "web01"
    r = client.post("/api/v1/hosts", json=host_body(name="web02", mac="52:54:00:00:00:99"))
    assert r.status_code == 409 and r.json()["field"] == "bmc.address"
    # same address on another port is a different BMC (several ipmi_sim on one IP)
    body = host_body(name="web02", mac="52:54:00:00:00:99")
    body["bmc"]["port"] = 624
    assert client.post("/api/v1/hosts", json=body).status_code == 201
    # PATCH into a duplicate is refused too
    r = client.patch("/api/v1/hosts/web02", json={"nics": [{"mac": "52:54:00:12:34:56"}]})
    assert r.status_code == 409
    assert _count(client) == 2


def test_unknown_host_404_and_auth_401(client, anon) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/hosts/ghost")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.delete("/api/v1/hosts/ghost").status_code == 404
    assert anon.get("/api/v1/hosts").status_code == 401
    r = anon.get("/api/v1/hosts", headers={"Authorization": "Bearer prov_wrong"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert anon.get("/healthz").status_code == 200


def test_body_too_large_413(client, settings) -> None:  # type: ignore[no-untyped-def]
    body = host_body()
    body["bmc"]["options"] = {"pad": "x" * (settings.max_body_bytes + 10)}
    r = client.post("/api/v1/hosts", json=body)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    r = client.post("/api/v1/hosts", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _count(client) == 0


def test_update_and_delete(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/racks", json={"name": "r1", "size_u": 10})
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    r = client.patch("/api/v1/hosts/web01", json={"rack": "r1", "u_position": 3, "roles": ["k8s", "k8s"],
                                                   "nics": [{"mac": "aa:bb:cc:dd:ee:01"},
                                                            {"mac": "aa:bb:cc:dd:ee:02", "boot": True}]})
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["rack"] == "r1" and h["u_position"] == 3 and h["roles"] == ["k8s"]
    assert [n["boot"] for n in h["nics"]] == [False, True]
    r = client.patch("/api/v1/hosts/web01", json={"u_position": 11})
    assert r.status_code == 422 and r.json()["field"] == "u_position"
    r = client.patch("/api/v1/hosts/web01", json={"rack": None})
    assert r.json()["rack"] is None
    assert client.delete("/api/v1/hosts/web01").status_code == 204
    assert client.get("/api/v1/hosts/web01").status_code == 404


def test_delete_transient_host_409(client, settings) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    from provisioner import crud, lifecycle

    with Session(get_engine(settings)) as s:
        lifecycle.advance(s, crud.get_host(s, "web01"), "verify", settings=settings)
    r = client.delete("/api/v1/hosts/web01")
    assert r.status_code == 409 and r.json()["current_state"] == "verifying"
    assert client.get("/api/v1/hosts/web01").status_code == 200


def test_transitions(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    r = client.post("/api/v1/hosts/web01/transition", json={"event": "maintain", "message": "disk swap"})
    assert r.status_code == 200 and r.json()["state"] == "maintenance"
    r = client.post("/api/v1/hosts/web01/transition", json={"event": "maintain"})
    assert r.status_code == 409
    j = r.json()
    assert j["error"] == "invalid_transition" and j["current_state"] == "maintenance"
    assert j["allowed_events"] == ["unmaintain"]
    r = client.post("/api/v1/hosts/web01/transition", json={"event": "unmaintain"})
    assert r.json()["state"] == "enrolled"
    # workflow events are not accepted here
    r = client.post("/api/v1/hosts/web01/transition", json={"event": "install"})
    assert r.status_code == 422 and r.json()["field"] == "event"
    hist = client.get("/api/v1/hosts/web01/events").json()["data"]
    assert [(e["from_state"], e["to_state"]) for e in hist[1:]] == [("enrolled", "maintenance"),
                                                                    ("maintenance", "enrolled")]
    assert hist[1]["message"] == "disk swap"


def _seed(client, n: int = 30) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/racks", json={"name": "ra"}).raise_for_status()
    client.post("/api/v1/racks", json={"name": "rb"}).raise_for_status()
    client.post("/api/v1/profiles", json={"name": "deb"}).raise_for_status()
    for i in range(n):
        body = {"name": f"node{i:03d}", "rack": "ra" if i % 2 else "rb", "profile": "deb",
                "roles": ["web"] if i % 3 == 0 else ["db", "web_x"],
                "nics": [{"mac": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"}]}
        client.post("/api/v1/hosts", json=body).raise_for_status()


def test_listing_filters_sort_pagination(client) -> None:  # type: ignore[no-untyped-def]
    _seed(client)
    client.post("/api/v1/hosts/node005/transition", json={"event": "maintain"}).raise_for_status()
    r = client.get("/api/v1/hosts", params={"limit": 7, "offset": 7})
    j = r.json()
    assert j["count"] == 30 and j["limit"] == 7 and j["data"][0]["name"] == "node007"
    assert len(j["data"]) == 7
    assert client.get("/api/v1/hosts", params={"rack": "ra"}).json()["count"] == 15
    assert client.get("/api/v1/hosts", params={"rack": "zz"}).json()["count"] == 0
    assert client.get("/api/v1/hosts", params={"role": "web"}).json()["count"] == 10  # not "web_x"
    assert client.get("/api/v1/hosts", params={"role": "db"}).json()["count"] == 20
    assert client.get("/api/v1/hosts", params={"state": "maintenance"}).json()["data"][0]["name"] == "node005"
    assert client.get("/api/v1/hosts", params={"power_state": "unknown"}).json()["count"] == 30
    assert client.get("/api/v1/hosts", params={"profile": "deb", "name": "node01"}).json()["count"] == 10
    names = [h["name"] for h in client.get("/api/v1/hosts", params={"sort": "-name", "limit": 3}).json()["data"]]
    assert names == ["node029", "node028", "node027"]
    assert client.get("/api/v1/hosts", params={"sort": "password"}).json()["field"] == "sort"
    assert client.get("/api/v1/hosts", params={"state": "bogus"}).json()["field"] == "state"
    assert client.get("/api/v1/hosts", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/hosts", params={"limit": 5000}).json()["field"] == "limit"


def test_listing_query_count_is_constant(client, settings) -> None:  # type: ignore[no-untyped-def]
    _seed(client, 40)
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine = get_engine(settings)
    event.listen(engine, "before_cursor_execute", count)
    try:
        client.get("/api/v1/hosts", params={"limit": 5}).raise_for_status()
        small = len(statements)
        statements.clear()
        client.get("/api/v1/hosts", params={"limit": 40}).raise_for_status()
        large = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert small == large, (small, large)
    assert large <= 7  # token check, count, page, NICs, racks, profiles (+1 spare)


def test_list_items_are_host_public(client) -> None:  # type: ignore[no-untyped-def]
    """The listing's hand-built JSON is exactly what GET /hosts/{host} (a validated HostPublic) returns."""
    from provisioner.schemas import HostPublic

    _seed(client, 3)
    client.post("/api/v1/hosts/node001/transition", json={"event": "maintain"}).raise_for_status()
    for item in client.get("/api/v1/hosts").json()["data"]:
        HostPublic.model_validate(item)
        assert item == client.get(f"/api/v1/hosts/{item['name']}").json()


def _slow(ctx):  # type: ignore[no-untyped-def]
    import time

    for _ in range(500):
        ctx.progress(step="waiting")  # raises TaskCancelled once the abort flagged the task
        time.sleep(0.01)
    return {"finished": True}


def test_abort_stops_the_running_task(client, settings) -> None:  # type: ignore[no-untyped-def]

    from provisioner import crud, lifecycle
    from provisioner.conductor import engine

    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    with Session(get_engine(settings)) as s:
        for ev in ("verify", "done", "install"):
            lifecycle.advance(s, crud.get_host(s, "web01"), ev, settings=settings)
        host_id = crud.get_host(s, "web01").id

    engine.register("test-slow-install", _slow)
    engine.start(settings)
    try:
        task = engine.submit("test-slow-install", host_id=host_id, settings=settings)
        r = client.post("/api/v1/hosts/web01/transition", json={"event": "abort", "message": "wrong disk"})
        assert r.status_code == 200 and r.json()["state"] == "install-failed"
        assert r.json()["last_error"] == "wrong disk"
        engine.wait(task.id or 0, timeout=10)
        assert client.get(f"/api/v1/tasks/{task.id}").json()["status"] == "cancelled"
    finally:
        engine.stop()
