"""The web console (/ui): login/logout, the session cookie, CSRF, scopes, escaping, the pages.

Against the real app (TestClient) on a migrated SQLite database; the actions go through the
REST route functions, so a refused one is checked by what it did not change (host history,
audit log, tasks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from provisioner import auth, migrate
from provisioner.api.app import create_app
from provisioner.api.ui import session as ui_session
from provisioner.db import get_engine
from provisioner.models import AuditLog, Event, Host, Task
from provisioner.settings import Settings

HOSTILE = "<script>alert('x')</script>"
BASE = "http://testserver"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(data_dir=tmp_path, tftp_enabled=False, dhcp_enabled=False, power_sync_enabled=False)
    migrate.upgrade(s)
    yield s
    get_engine(s).dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        yield c


def _token(settings: Settings, *scope: str) -> str:
    with Session(get_engine(settings)) as s:
        return auth.create_token(s, name="-".join(scope), scopes=scope)


@pytest.fixture
def admin(settings: Settings) -> str:
    return _token(settings, "admin")


@pytest.fixture
def inventory(client: TestClient, admin: str) -> None:
    h = {"Authorization": f"Bearer {admin}"}
    r = client.post("/api/v1/racks", json={"name": "r1", "size_u": 12, "site": HOSTILE}, headers=h)
    assert r.status_code == 201
    for name, u in (("web01", 3), ("web02", 7), ("loose01", None)):
        body: dict[str, Any] = {"name": name, "rack": "r1", "u_position": u,
                                "bmc": {"kind": "manual", "username": "<img src=x onerror=alert(1)>"}}
        assert client.post("/api/v1/hosts", json=body, headers=h).status_code == 201, name
    r = client.post("/api/v1/hosts/web01/transition", json={"event": "maintain", "message": HOSTILE}, headers=h)
    assert r.status_code == 200, r.text


def login(client: TestClient, token: str) -> Any:
    page = client.get("/ui/login")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    return client.post("/ui/login", data={"csrf": csrf.group(1), "token": token})


def csrf_of(client: TestClient, path: str = "/ui/racks") -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert m
    return m.group(1)


def counts(settings: Settings) -> tuple[int, int, int]:
    with Session(get_engine(settings)) as s:
        return tuple(int(s.exec(select(func.count()).select_from(m)).one())  # type: ignore[return-value]
                     for m in (Event, AuditLog, Task))


# --------------------------------------------------------------------------- login, cookie, logout
def test_pages_need_a_session(client: TestClient) -> None:
    for path in ("/ui/racks", "/ui/racks/r1", "/ui/hosts", "/ui/hosts/web01", "/ui/tasks", "/ui/profiles"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
    assert client.get("/ui/events").status_code == 401
    assert client.get("/ui/assets/console.js").status_code == 401
    assert client.get("/ui/assets/console.css").status_code == 200  # the login page's style only
    assert client.get("/ui/login").status_code == 200


def test_login_sets_a_signed_strict_httponly_cookie_without_the_token(client: TestClient, admin: str) -> None:
    r = login(client, admin)
    assert r.status_code == 303 and r.headers["location"] == "/ui/racks"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(ui_session.COOKIE + "="))
    low = cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/ui" in low
    assert "secure" not in low  # plain http here; https adds it (test below)
    assert admin not in cookie and auth.hash_token(admin) not in cookie
    assert client.get("/ui/racks").status_code == 200


def test_cookie_secure_over_https(settings: Settings, admin: str) -> None:
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as c:
        r = login(c, admin)
        cookie = next(x for x in r.headers.get_list("set-cookie") if x.startswith(ui_session.COOKIE + "="))
        assert "secure" in cookie.lower()


def test_bad_token_and_forged_cookie_refused(client: TestClient, admin: str) -> None:
    r = login(client, "prov_not-a-real-token-at-all-000000")
    assert r.status_code == 401 and "not valid" in r.text
    assert ui_session.COOKIE not in client.cookies
    login(client, admin)
    good = client.cookies[ui_session.COOKIE]
    token_id, expires, nonce, mac = good.split(".")
    client.cookies.set(ui_session.COOKIE, f"{int(token_id) + 1}.{expires}.{nonce}.{mac}", path="/ui")
    assert client.get("/ui/racks").status_code == 303


def test_login_form_needs_its_csrf(client: TestClient, admin: str) -> None:
    client.get("/ui/login")
    r = client.post("/ui/login", data={"csrf": "wrong", "token": admin})
    assert r.status_code == 403 and ui_session.COOKIE not in client.cookies


def test_logout_ends_the_session(client: TestClient, admin: str) -> None:
    login(client, admin)
    kept = client.cookies[ui_session.COOKIE]
    assert client.post("/ui/logout", data={"csrf": "nope"}).status_code == 403
    r = client.post("/ui/logout", data={"csrf": csrf_of(client)})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    client.cookies.set(ui_session.COOKIE, kept, path="/ui")  # a copy of the old cookie is dead too
    assert client.get("/ui/racks").status_code == 303


def test_revoked_token_ends_its_sessions(client: TestClient, settings: Settings, admin: str) -> None:
    login(client, admin)
    with Session(get_engine(settings)) as s:
        auth.revoke_tokens(s, "admin")
    assert client.get("/ui/racks").status_code == 303


# --------------------------------------------------------------------------- pages
@pytest.mark.usefixtures("inventory")
def test_rack_elevation(client: TestClient, admin: str) -> None:
    login(client, admin)
    r = client.get("/ui/racks/r1")
    assert r.status_code == 200
    assert "default-src 'self'" in r.headers["content-security-policy"]
    slots = re.findall(r'<li class="slot ([^"]+)"(?: data-host="([^"]*)")? data-u="(\d+)"', r.text)
    assert [int(u) for *_, u in slots] == list(range(12, 0, -1))  # size_u slots, top first
    placed = {h: (int(u), cls) for cls, h, u in slots if h}
    assert placed == {"web01": (3, "host st-maintenance"), "web02": (7, "host st-enrolled")}
    assert "Not placed in r1" in r.text and 'data-host="loose01"' in r.text
    assert client.get("/ui/racks").status_code == 200
    assert client.get("/ui/racks/nope").status_code == 404


@pytest.mark.usefixtures("inventory")
def test_hostile_strings_are_escaped(client: TestClient, settings: Settings, admin: str) -> None:
    with Session(get_engine(settings)) as s:  # a name the API would refuse, written behind its back
        host = s.exec(select(Host).where(Host.name == "web02")).one()
        host.name = "<b>bold</b>"
        s.add(host)
        s.commit()
    login(client, admin)
    paths = ("/ui/racks", "/ui/hosts", "/ui/hosts/web01", "/ui/hosts/%3Cb%3Ebold%3C%2Fb%3E")
    pages = [client.get(p).text for p in paths]
    for text in pages:
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in pages[0]  # the rack's site
    assert "&lt;b&gt;bold&lt;/b&gt;" in pages[0]
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in pages[2]  # the history message
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[2]  # the BMC user


@pytest.mark.usefixtures("inventory")
def test_host_page_lists_and_filters(client: TestClient, admin: str) -> None:
    login(client, admin)
    page = client.get("/ui/hosts/web01").text
    assert "maintenance" in page and "not set" in page  # BMC password: only whether it is set
    assert client.get("/ui/hosts/nope").status_code == 404
    listed = client.get("/ui/hosts", params={"state": "maintenance"}).text
    assert 'data-host="web01"' in listed and 'data-host="web02"' not in listed
    assert 'data-host="web02"' in client.get("/ui/hosts", params={"q": "web0"}).text
    assert 'data-host="web01"' not in client.get("/ui/hosts", params={"q": "loose"}).text
    assert client.get("/ui/tasks").status_code == 200 and client.get("/ui/profiles").status_code == 200


def test_history_pages_on_demand_nothing_truncated(client: TestClient, settings: Settings, admin: str) -> None:
    h = {"Authorization": f"Bearer {admin}"}
    client.post("/api/v1/hosts", json={"name": "h1"}, headers=h)
    long = "x" * 1000  # TransitionRequest.message: at most 1024
    for i in range(60):
        ev = "maintain" if i % 2 == 0 else "unmaintain"
        assert client.post("/api/v1/hosts/h1/transition", json={"event": ev, "message": f"m{i} {long}"},
                           headers=h).status_code == 200
    login(client, admin)
    page = client.get("/ui/hosts/h1").text
    assert f"m59 {long}" in page and "m0 " not in page
    older = re.search(r'href="(/ui/hosts/h1/history\?before=\d+)" data-older', page)
    assert older
    frag = client.get(older.group(1)).text
    assert f"m0 {long}" in frag


# --------------------------------------------------------------------------- actions: CSRF and scopes
@pytest.mark.usefixtures("inventory")
def test_action_without_or_with_wrong_csrf_refused(client: TestClient, settings: Settings, admin: str) -> None:
    login(client, admin)
    before = counts(settings)
    for data in ({}, {"csrf": "forged"}):
        r = client.post("/ui/hosts/web01/actions/abort", data=data)
        assert r.status_code == 403 and "nothing was changed" in r.text
    good = csrf_of(client)
    r = client.post("/ui/hosts/web01/actions/abort", data={"csrf": good}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert counts(settings) == before
    # another session's token is no good either
    other = TestClient(client.app, base_url=BASE, follow_redirects=False)
    login(other, admin)
    assert other.post("/ui/hosts/web01/actions/abort", data={"csrf": good}).status_code == 403
    assert counts(settings) == before


@pytest.mark.usefixtures("inventory")
def test_viewer_sees_but_cannot_act(client: TestClient, settings: Settings) -> None:
    login(client, _token(settings, "viewer"))
    page = client.get("/ui/hosts/web01").text
    assert "may look but not act" in page and "actions/power-on" not in page
    before = counts(settings)
    r = client.post("/ui/hosts/web01/actions/configure", data={"csrf": csrf_of(client)})
    assert r.status_code == 403 and "operator scope" in r.text
    assert counts(settings) == before


@pytest.mark.usefixtures("inventory")
def test_operator_action_runs_the_route_and_is_audited(client: TestClient, settings: Settings) -> None:
    login(client, _token(settings, "operator"))
    r = client.post("/ui/hosts/web01/actions/power-on", data={"csrf": csrf_of(client, "/ui/hosts/web01")})
    assert r.status_code == 303 and r.headers["location"] == "/ui/hosts/web01"
    page = client.get("/ui/hosts/web01").text
    assert 'class="ok"' in page or 'class="err"' in page  # a manual BMC: the result is shown either way
    r = client.post("/ui/hosts/web01/actions/abort", data={"csrf": csrf_of(client, "/ui/hosts/web01")})
    assert r.status_code == 303
    with Session(get_engine(settings)) as s:
        rows = s.exec(select(AuditLog).where(AuditLog.context == "ui")).all()
    assert rows and all(row.actor == "token:operator" for row in rows)


def test_sessions_keyed_by_the_secret_key(settings: Settings) -> None:
    value, _ = ui_session.issue(settings, 1)
    other = Settings(data_dir=settings.data_dir / "other", tftp_enabled=False, dhcp_enabled=False)
    assert ui_session._parse(settings, value) is not None
    assert ui_session._parse(other, value) is None


def test_ui_stream_bounds_and_kinds(settings: Settings, admin: str) -> None:
    bounded = settings.model_copy(update={"events_max_streams_per_token": 0})
    app = create_app(bounded)
    app.state.start_services = False
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        login(c, admin)
        assert c.get("/ui/events", params={"kind": "nope"}).status_code == 422
        r = c.get("/ui/events")
        assert r.status_code == 429 and r.json()["error"] == "too_many_streams"
