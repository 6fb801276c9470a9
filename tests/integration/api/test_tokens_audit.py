"""Tokens with scopes and the audit log, over HTTP on a live server, on SQLite and PostgreSQL.

An admin makes a viewer and an operator token through the API; the viewer reads and
is refused every write; the operator changes racks and hosts but may not manage tokens
or read the audit log; revocation bites at once; the audit log names who changed what,
filters by actor and object, pages newest first, and holds no secret anywhere: neither
BMC password nor any plain token appears in any row. A deleted host's history is still
readable by its name.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import Session
from typer.testing import CliRunner

from provisioner.db import get_engine
from tests.integration.api.conftest import host_body

pytestmark = pytest.mark.integration

OLD_PW = "hunter2-secret"
NEW_PW = "Rotated-Bmc-Pw-77"


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _make(http: httpx.Client, admin: str, name: str, *scopes: str, **extra: Any) -> str:
    r = http.post("/api/v1/tokens", headers=_h(admin), json={"name": name, "scopes": list(scopes), **extra})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/api/v1/tokens/{body['id']}" and body["scopes"] == list(scopes)
    assert r.headers.get("cache-control") == "no-store"
    assert body["token"].startswith("prov_")
    return str(body["token"])


def _audit(http: httpx.Client, admin: str, **params: Any) -> list[dict[str, Any]]:
    """Every audit row matching ``params``, following the cursor (pages of 3, newest first)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**params, "limit": 3, **({"cursor": cursor} if cursor else {})}
        r = http.get("/api/v1/audit", headers=_h(admin), params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def test_scoped_tokens_and_the_audit_log(live, token, settings) -> None:  # type: ignore[no-untyped-def]
    admin = token  # the conftest's token: made like the first start's, an admin
    with httpx.Client(base_url=live.url, timeout=30) as http:
        viewer = _make(http, admin, "ro", "viewer")
        operator = _make(http, admin, "ops", "operator")

        # the viewer reads, and every write is refused naming the scope it needs
        assert http.get("/api/v1/hosts", headers=_h(viewer)).status_code == 200
        r = http.post("/api/v1/racks", headers=_h(viewer), json={"name": "r1"})
        assert r.status_code == 403 and r.json()["required_scope"] == "operator" and "operator" in r.json()["message"]
        assert http.get("/api/v1/audit", headers=_h(viewer)).status_code == 403

        # the operator acts on racks and hosts ...
        assert http.post("/api/v1/racks", headers=_h(operator), json={"name": "r1", "site": "dc1"}).status_code == 201
        assert http.post("/api/v1/hosts", headers=_h(operator), json=host_body(rack="r1")).status_code == 201
        r = http.patch("/api/v1/hosts/web01", headers=_h(operator), json={"bmc": {"password": NEW_PW}, "roles": ["db"]})
        assert r.status_code == 200, r.text
        r = http.post("/api/v1/hosts/web01/transition", headers=_h(operator), json={"event": "maintain"})
        assert r.status_code == 200, r.text
        assert http.delete("/api/v1/hosts/web01", headers=_h(operator)).status_code == 204
        assert http.delete("/api/v1/racks/r1", headers=_h(operator)).status_code == 204
        # ... but manages no tokens and reads no audit
        assert http.get("/api/v1/tokens", headers=_h(operator)).status_code == 403
        r = http.post("/api/v1/tokens", headers=_h(operator), json={"name": "x", "scopes": ["admin"]})
        assert r.status_code == 403 and r.json()["required_scope"] == "admin"
        assert http.get("/api/v1/audit", headers=_h(operator)).status_code == 403

        # the deleted host's history is still there, by name
        r = http.get("/api/v1/hosts/web01/events", headers=_h(viewer))
        assert r.status_code == 200, r.text
        assert [e["event"] for e in r.json()["data"]] == ["enroll", "maintain"]
        assert http.get("/api/v1/events", headers=_h(viewer), params={"host": "web01"}).json()["count"] == 2
        assert http.get("/api/v1/hosts/never-was/events", headers=_h(viewer)).status_code == 404

        # listing shows scopes and real use, never the secret
        listed = http.get("/api/v1/tokens", headers=_h(admin))
        assert listed.status_code == 200
        by_name = {t["name"]: t for t in listed.json()["data"]}
        assert by_name["ro"]["scopes"] == ["viewer"] and by_name["ro"]["last_used_at"] is not None
        assert "token_hash" not in by_name["ro"] and "token" not in by_name["ro"]
        assert viewer not in listed.text and operator not in listed.text

        # revoked: refused at once
        assert http.delete(f"/api/v1/tokens/{by_name['ro']['id']}", headers=_h(admin)).status_code == 204
        assert http.get("/api/v1/hosts", headers=_h(viewer)).status_code == 401
        assert http.get(f"/api/v1/tokens/{by_name['ro']['id']}", headers=_h(admin)).json()["revoked"] is True

        # expired: refused from then on
        soon = _make(http, admin, "brief", "viewer",
                     expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2)))
        assert http.get("/api/v1/hosts", headers=_h(soon)).status_code == 200
        time.sleep(3)
        r = http.get("/api/v1/hosts", headers=_h(soon))
        assert r.status_code == 401 and "expired" in r.json()["message"]

        # the audit log: who did what to which object, newest first
        everything = _audit(http, admin)
        ids = [row["id"] for row in everything]
        assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
        by_ops = _audit(http, admin, actor="ops")
        assert {(r["action"], r["object_type"], r["object_name"]) for r in by_ops} == {
            ("create", "rack", "r1"), ("create", "host", "web01"), ("update", "host", "web01"),
            ("maintain", "host", "web01"), ("delete", "host", "web01"), ("delete", "rack", "r1")}
        assert all(r["actor"] == "token:ops" for r in by_ops)
        assert _audit(http, admin, actor="token:ops") == by_ops
        host_rows = _audit(http, admin, object="host/web01")
        assert [r["action"] for r in host_rows] == ["delete", "maintain", "update", "create"]
        update = host_rows[2]
        assert "bmc.password: (changed)" in update["summary"] and 'roles: ["docker"] -> ["db"]' in update["summary"]
        assert update["request"] == "PATCH /api/v1/hosts/{host}"
        assert "bmc.password=(set)" in host_rows[3]["summary"] and "rack=r1" in host_rows[3]["summary"]
        token_rows = _audit(http, admin, object="token/ro")
        assert [r["action"] for r in token_rows] == ["revoke", "create"]
        assert all(r["actor"] == "token:tester" for r in token_rows)
        assert {r["object_name"] for r in _audit(http, admin, object="token/")} == {"ro", "ops", "brief"}
        assert _audit(http, admin, object="web01") == host_rows

        # no secret in any row, through the API or in the table itself
        secrets = [OLD_PW, NEW_PW, viewer, operator, soon, admin]
        blob = repr(everything)
        with Session(get_engine(settings)) as s:
            blob += repr(s.execute(text("SELECT * FROM audit_log")).all())
        for secret in secrets:
            assert secret not in blob


def test_the_cli_manages_tokens_through_the_api(live, token, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    import provisioner.cli.serve  # noqa: F401  (registers ``prov token``)
    from provisioner.cli.groups import app

    env = {"PROV_URL": live.url, "PROV_TOKEN": token}

    def prov(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)

    r = prov("token", "create", "--name", "cli-ro", "--scope", "viewer", "--expires-in", "1d")
    assert r.exit_code == 0, r.output
    made = r.stdout.strip()
    assert made.startswith("prov_") and len(r.stdout.splitlines()) == 1
    with httpx.Client(base_url=live.url) as http:
        assert http.get("/api/v1/hosts", headers=_h(made)).status_code == 200
        assert http.post("/api/v1/racks", headers=_h(made), json={"name": "r9"}).status_code == 403
    listed = prov("token", "list", "-o", "json")
    assert listed.exit_code == 0, listed.output
    rows = {t["name"]: t for t in json.loads(listed.stdout)}
    assert rows["cli-ro"]["scopes"] == ["viewer"] and rows["cli-ro"]["expires_at"] and made not in listed.stdout
    revoked = prov("token", "revoke", "cli-ro", "-o", "json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)[0]["revoked"] is True
    with httpx.Client(base_url=live.url) as http:
        assert http.get("/api/v1/hosts", headers=_h(made)).status_code == 401
    assert prov("token", "revoke", "nobody").exit_code == 3
