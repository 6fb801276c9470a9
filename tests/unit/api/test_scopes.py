"""Token scopes on every route (api/scopes.py), expiry, revocation and the cache, last_used_at.

The walk goes over every route the app serves behind a token, so a route added
later is covered without being named here: a viewer token gets 403 on every write
and never 403 on a read (except the admin-only token and audit routes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from provisioner import auth, migrate
from provisioner.api import deps, principals, scopes
from provisioner.api.app import create_app
from provisioner.db import get_engine
from provisioner.models import ApiToken, utcnow
from provisioner.settings import Settings

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(data_dir=tmp_path, tftp_enabled=False, dhcp_enabled=False, power_sync_enabled=False)
    migrate.upgrade(s)
    yield s
    get_engine(s).dispose()


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app) as client:
        yield client


def _token(settings: Settings, *scope: str, name: str | None = None, **kw: Any) -> str:
    with Session(get_engine(settings)) as s:
        return auth.create_token(s, name=name or "-".join(scope), scopes=scope, **kw)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- the route walk
def _walk(routes: list[Any]) -> Iterator[tuple[str, str]]:
    """(method, full path) of every API route; included routers are walked into (newer FastAPI
    keeps them as one route each, older ones flatten them into APIRoutes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods):
                yield method, route.path
        elif hasattr(route, "effective_candidates"):
            for cand in route.effective_candidates():
                if hasattr(cand, "effective_candidates"):
                    yield from _walk([cand])
                elif isinstance(getattr(cand, "original_route", None), APIRoute):
                    for method in sorted(cand.methods):
                        yield method, cand.path


def protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = sorted({(m, p) for m, p in _walk(app.routes) if p.startswith("/api/v1/") or p == "/metrics"})
    return [(m, p) for m, p in found if m != "HEAD"]


# Never ends (a whole reply cannot be read); a viewer's stream: tests/integration/api/test_events_stream_live.py
EVENT_STREAM = "/api/v1/events/stream"


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "999999" if m.group(1).endswith("id") else "nosuch-x", path)


def _admin_only(path: str) -> bool:
    local = path.removeprefix("/api/v1")
    return any(local == p or local.startswith(p + "/") for p in scopes.ADMIN_ONLY_PREFIXES)


def test_the_walk_sees_every_operator_route(api: TestClient) -> None:
    walked = {p for _m, p in protected_routes(api.app)}  # type: ignore[arg-type]
    documented = {p for p in api.app.openapi()["paths"] if p.startswith("/api/v1/") or p == "/metrics"}  # type: ignore[attr-defined]
    assert documented <= walked and len(walked) > 40
    assert {"/api/v1/tokens", "/api/v1/tokens/{token_id}", "/api/v1/audit"} <= walked


def test_without_a_token_every_route_is_401(api: TestClient) -> None:
    for method, path in protected_routes(api.app):  # type: ignore[arg-type]
        r = api.request(method, _url(path), json={} if method in WRITES else None)
        assert r.status_code == 401, (method, path, r.status_code)


def test_viewer_reads_everything_and_writes_nothing(api: TestClient, settings: Settings) -> None:
    viewer = _bearer(_token(settings, "viewer"))
    checked = 0
    for method, path in protected_routes(api.app):  # type: ignore[arg-type]
        if path == EVENT_STREAM:
            continue
        r = api.request(method, _url(path), headers=viewer, json={} if method in WRITES else None)
        if method in WRITES or _admin_only(path):
            need = "admin" if _admin_only(path) else "operator"
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            body = r.json()
            assert body["error"] == "forbidden" and body["required_scope"] == need, (method, path, body)
            assert f"needs the {need} scope" in body["message"]
        else:
            assert r.status_code in (200, 404, 422), (method, path, r.status_code, r.text)
        checked += 1
    assert checked > 50


def test_operator_acts_but_does_not_manage_tokens(api: TestClient, settings: Settings) -> None:
    operator = _bearer(_token(settings, "operator"))
    for method, path in protected_routes(api.app):  # type: ignore[arg-type]
        if _admin_only(path):
            r = api.request(method, _url(path), headers=operator, json={} if method in WRITES else None)
            assert r.status_code == 403 and r.json()["required_scope"] == "admin", (method, path)
        elif method == "GET" and path != EVENT_STREAM:
            assert api.get(_url(path), headers=operator).status_code in (200, 404, 422), path
    assert api.post("/api/v1/racks", headers=operator, json={"name": "r1"}).status_code == 201
    assert api.patch("/api/v1/racks/r1", headers=operator, json={"site": "dc2"}).status_code == 200
    admin = _bearer(_token(settings, "admin"))
    assert api.get("/api/v1/tokens", headers=admin).status_code == 200
    assert api.get("/api/v1/audit", headers=admin).status_code == 200


def test_installer_reaches_only_its_reads(api: TestClient, settings: Settings) -> None:
    installer = _bearer(_token(settings, "installer"))
    allowed = {p for _m, p in scopes.INSTALLER_ROUTES}
    for method, path in protected_routes(api.app):  # type: ignore[arg-type]
        r = api.request(method, _url(path), headers=installer, json={} if method in WRITES else None)
        if method == "GET" and path.removeprefix("/api/v1") in allowed:
            assert r.status_code in (200, 404, 422), (method, path, r.status_code)
        else:
            assert r.status_code == 403, (method, path, r.status_code)
    # several scopes add up
    both = _bearer(_token(settings, "installer", "viewer"))
    assert api.get("/api/v1/hosts", headers=both).status_code == 200
    assert api.post("/api/v1/racks", headers=both, json={"name": "r2"}).status_code == 403


def test_scope_table() -> None:
    assert scopes.required_scope("GET", "/tokens") == "admin"
    assert scopes.required_scope("GET", "/tokensmith") == "viewer"  # a prefix is a whole segment
    assert scopes.required_scope("DELETE", "/hosts/{host}") == "operator"
    assert scopes.allows(["admin"], "DELETE", "/audit")
    assert not scopes.allows(["operator"], "GET", "/audit/x")
    assert scopes.allows(["installer"], "HEAD", "/templates")
    assert not scopes.allows([], "GET", "/hosts")


# --------------------------------------------------------------------------- tokens
def test_first_admin_token_stays_admin(settings: Settings) -> None:
    first = auth.ensure_admin_token(settings)
    assert first
    with Session(get_engine(settings)) as s:
        row = s.exec(select(ApiToken)).one()
        assert row.name == "admin" and auth.token_scopes(row) == ("admin",) and row.expires_at is None


def test_unknown_or_no_scope_is_refused(settings: Settings) -> None:
    from provisioner.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown scope 'root'"):
        _token(settings, "root")
    with pytest.raises(InvalidInput, match="at least one scope"):
        auth.parse_scopes([])
    assert auth.parse_scopes(["viewer", "admin", "viewer"]) == ("admin", "viewer")


def test_expired_token_is_refused_even_while_cached(api: TestClient, settings: Settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token(settings, "viewer", expires_at=utcnow() + timedelta(minutes=5))
    assert api.get("/api/v1/racks", headers=_bearer(token)).status_code == 200  # now cached
    later = utcnow() + timedelta(minutes=6)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    r = api.get("/api/v1/racks", headers=_bearer(token))
    assert r.status_code == 401 and "expired" in r.json()["message"]
    with Session(get_engine(settings)) as s:
        assert auth.verify_token(s, token) is None


def test_revoke_through_the_api_is_at_once_elsewhere_within_the_cache(
        api: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = _bearer(_token(settings, "admin"))
    viewer_token = _token(settings, "viewer")
    viewer = _bearer(viewer_token)
    assert api.get("/api/v1/racks", headers=viewer).status_code == 200  # cached now
    tid = next(t["id"] for t in api.get("/api/v1/tokens", headers=admin).json()["data"] if t["name"] == "viewer")
    assert api.delete(f"/api/v1/tokens/{tid}", headers=admin).status_code == 204
    assert api.get("/api/v1/racks", headers=viewer).status_code == 401  # this process: at once

    # Revoked on the database by another process (``prov token revoke`` on the controller's machine):
    # still accepted from the cache, refused once the cache entry is TOKEN_CACHE_TTL old.
    other = _token(settings, "viewer", name="other")
    assert api.get("/api/v1/racks", headers=_bearer(other)).status_code == 200
    with Session(get_engine(settings)) as s:
        auth.revoke_tokens(s, "other")
    assert api.get("/api/v1/racks", headers=_bearer(other)).status_code == 200
    real = time.monotonic
    monkeypatch.setattr(deps, "time", SimpleNamespace(monotonic=lambda: real() + deps.TOKEN_CACHE_TTL + 1))
    assert api.get("/api/v1/racks", headers=_bearer(other)).status_code == 401


def test_the_last_admin_token_cannot_be_revoked_through_the_api(api: TestClient, settings: Settings) -> None:
    admin = _bearer(_token(settings, "admin"))
    tid = api.get("/api/v1/tokens", headers=admin).json()["data"][0]["id"]
    r = api.delete(f"/api/v1/tokens/{tid}", headers=admin)
    assert r.status_code == 409 and "last usable admin token" in r.json()["message"]
    assert api.delete("/api/v1/tokens/999999", headers=admin).status_code == 404


def _last_used(settings: Settings, name: str) -> Any:
    with Session(get_engine(settings)) as s:
        return s.exec(select(ApiToken).where(ApiToken.name == name)).one().last_used_at


def test_last_used_at_is_written_at_most_once_a_minute(api: TestClient, settings: Settings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = _bearer(_token(settings, "viewer", name="ro"))
    assert _last_used(settings, "ro") is None
    assert api.get("/api/v1/racks", headers=token).status_code == 200
    first = _last_used(settings, "ro")
    assert first is not None and abs((utcnow() - first).total_seconds()) < 30
    writes: list[int] = []
    real_touch = auth.touch
    monkeypatch.setattr(auth, "touch", lambda s, tid, now=None: writes.append(tid) or real_touch(s, tid, now))
    for _ in range(20):
        assert api.get("/api/v1/racks", headers=token).status_code == 200
    assert writes == [] and _last_used(settings, "ro") == first
    # a minute later (this process's clock and the database's) the next request writes it again
    real = time.monotonic
    monkeypatch.setattr(principals, "time", SimpleNamespace(monotonic=lambda: real() + 61))
    later = utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    assert api.get("/api/v1/racks", headers=token).status_code == 200
    assert len(writes) == 1 and _last_used(settings, "ro") == later
    # a 403 is a use of the token too
    api.post("/api/v1/racks", headers=token, json={"name": "r9"})
    assert len(writes) == 1


def test_the_token_routes_never_show_the_token_or_its_hash(api: TestClient, settings: Settings) -> None:
    admin = _bearer(_token(settings, "admin"))
    r = api.post("/api/v1/tokens", headers=admin, json={"name": "ci", "scopes": ["viewer"], "expires_in": 3600})
    assert r.status_code == 201 and r.headers["location"] == f"/api/v1/tokens/{r.json()['id']}"
    plain = r.json()["token"]
    with Session(get_engine(settings)) as s:
        digest = s.exec(select(ApiToken).where(ApiToken.name == "ci")).one().token_hash
    for text in (api.get("/api/v1/tokens", headers=admin).text,
                 api.get(r.headers["location"], headers=admin).text,
                 api.get("/api/v1/audit", headers=admin).text):
        assert plain not in text and digest not in text
    bad = api.post("/api/v1/tokens", headers=admin, json={"name": "x", "scopes": ["viewer"], "expires_in": 60,
                                                          "expires_at": "2030-01-01T00:00:00Z"})
    assert bad.status_code == 422
    assert api.post("/api/v1/tokens", headers=admin, json={"name": "x", "scopes": ["root"]}).status_code == 422
    assert api.post("/api/v1/tokens", headers=admin, json={"name": "x", "scopes": []}).status_code == 422
    past = api.post("/api/v1/tokens", headers=admin, json={"name": "x", "scopes": ["viewer"],
                                                           "expires_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422 and past.json()["field"] == "expires_at"
