# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""HTTP semantics of the operator API (issue 19, item 6): ETag / If-None-Match / If-Match (412),
Location on 201, X-Request-ID on every answer and log line, WWW-Authenticate on 401, unknown
query parameters refused, and the OpenAPI document saying all of it.

The concurrency tests slow the write down (the crud call sleeps while the first request holds the
object's lock) so that the second request's If-Match is checked while the first is still writing:
exactly one may win. The control test takes the lock away and shows both would then win, so the
others prove the lock, not luck.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from provisioner import crud, templates_catalog
from provisioner.api import etags
from provisioner.api.app import create_app
from provisioner.logs import setup_logging
from provisioner.settings import Settings
from tests.support.install import Api, api, db, settings, snapshot  # noqa: F401

V1 = "/api/v1"
OBJECTS = {  # kind -> (collection, create body, a patch, another patch)
    "host": ("/hosts", {"name": "h1"}, {"roles": ["web"]}, {"roles": ["db"]}),
    "rack": ("/racks", {"name": "r1", "site": "dc1"}, {"site": "dc2"}, {"site": "dc3"}),
    "profile": ("/profiles", {"name": "p1"}, {"kernel_args": "quiet"}, {"kernel_args": "console=ttyS0"}),
}
KINDS = list(OBJECTS)


def _create(api: Api, kind: str) -> httpx.Response:
    path, body, _, _ = OBJECTS[kind]
    r = api.client.post(V1 + path, json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    return r


def _url(kind: str) -> str:
    path, body, _, _ = OBJECTS[kind]
    return f"{V1}{path}/{body['name']}"


def _get(api: Api, url: str, **headers: str) -> httpx.Response:
    return api.client.get(url, headers={**api.auth, **headers})


# --------------------------------------------------------------------------- ETag, Location, 304
@pytest.mark.parametrize("kind", KINDS)
def test_created_object_has_location_and_the_etag_get_answers(api, kind: str) -> None:
    created = _create(api, kind)
    assert created.headers["location"] == _url(kind)
    got = _get(api, created.headers["location"])
    assert got.status_code == 200 and got.content == created.content
    tag = got.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")  # strong, quoted
    assert created.headers["etag"] == tag == _get(api, _url(kind)).headers["etag"]  # stable
    assert tag == etags.tag_of(got.content)


@pytest.mark.parametrize("kind", KINDS)
def test_if_none_match_answers_304_without_a_body(api, kind: str) -> None:
    tag = _create(api, kind).headers["etag"]
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        r = _get(api, _url(kind), **{"If-None-Match": header})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag, header
    r = _get(api, _url(kind), **{"If-None-Match": '"other"'})
    assert r.status_code == 200 and r.headers["etag"] == tag


@pytest.mark.parametrize("kind", KINDS)
def test_patch_answers_the_new_etag(api, kind: str) -> None:
    old = _create(api, kind).headers["etag"]
    _, _, patch, _ = OBJECTS[kind]
    r = api.client.patch(_url(kind), json=patch, headers={**api.auth, "If-Match": old})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] != old
    assert r.headers["etag"] == _get(api, _url(kind)).headers["etag"]


def test_a_hosts_etag_follows_every_change_not_only_its_version(api, db) -> None:
    """Host.version counts state transitions; the ETag must also move for a PATCH or a power sync."""
    _create(api, "host")
    first = _get(api, _url("host"))
    api.client.patch(_url("host"), json={"roles": ["web"]}, headers=api.auth).raise_for_status()
    second = _get(api, _url("host"))
    assert second.json()["version"] == first.json()["version"]
    assert second.headers["etag"] != first.headers["etag"]
    host = crud.get_host(db, "h1")
    host.power_state = "on"  # what the power sync writes
    db.add(host)
    db.commit()
    assert _get(api, _url("host")).headers["etag"] != second.headers["etag"]


def test_transition_answers_the_hosts_new_etag(api) -> None:
    _create(api, "host")
    r = api.client.post(f"{_url('host')}/transition", json={"event": "maintain"}, headers=api.auth)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == _get(api, _url("host")).headers["etag"]


# --------------------------------------------------------------------------- If-Match
@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_if_match_is_412_and_changes_nothing(api, db, kind: str) -> None:
    stale = _create(api, kind).headers["etag"]
    _, _, patch, other = OBJECTS[kind]
    api.client.patch(_url(kind), json=patch, headers=api.auth).raise_for_status()  # someone else's change
    current = _get(api, _url(kind))
    before = snapshot(db)
    for header in (stale, f"W/{current.headers['etag']}", '"nope"', "garbage, \"", ""):
        r = api.client.patch(_url(kind), json=other, headers={**api.auth, "If-Match": header})
        assert r.status_code == 412, (header, r.text)
        body = r.json()
        assert body["error"] == "precondition_failed" and body["kind"] == kind
        assert "changed since it was read" in body["message"]
        r = api.client.delete(_url(kind), headers={**api.auth, "If-Match": header})
        assert r.status_code == 412, (header, r.text)
    assert snapshot(db) == before
    assert _get(api, _url(kind)).content == current.content


@pytest.mark.parametrize("kind", KINDS)
def test_a_matching_if_match_or_star_or_none_writes(api, kind: str) -> None:
    tag = _create(api, kind).headers["etag"]
    _, _, patch, other = OBJECTS[kind]
    r = api.client.patch(_url(kind), json=patch, headers={**api.auth, "If-Match": f'"other", {tag}'})
    assert r.status_code == 200, r.text
    bare = r.headers["etag"].strip('"')  # as a curl user types it
    r = api.client.patch(_url(kind), json=other, headers={**api.auth, "If-Match": bare})
    assert r.status_code == 200, r.text
    r = api.client.patch(_url(kind), json=patch, headers={**api.auth, "If-Match": "*"})
    assert r.status_code == 200, r.text
    r = api.client.patch(_url(kind), json=other, headers=api.auth)  # no If-Match: as before
    assert r.status_code == 200, r.text
    r = api.client.delete(_url(kind), headers={**api.auth, "If-Match": r.headers["etag"]})
    assert r.status_code == 204, r.text
    assert _get(api, _url(kind)).status_code == 404


@pytest.mark.parametrize("kind", KINDS)
def test_if_match_on_a_missing_object_is_404(api, kind: str) -> None:
    r = api.client.patch(_url(kind), json=OBJECTS[kind][2], headers={**api.auth, "If-Match": "*"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert api.client.delete(_url(kind), headers={**api.auth, "If-Match": '"x"'}).status_code == 404


def test_precondition_comes_before_a_conflict(api) -> None:
    """A rack that holds a host cannot be deleted (409), but a stale If-Match says so first."""
    stale = _create(api, "rack").headers["etag"]
    api.client.post(f"{V1}/hosts", json={"name": "h1", "rack": "r1"}, headers=api.auth).raise_for_status()
    assert api.client.delete(_url("rack"), headers={**api.auth, "If-Match": stale}).status_code == 412
    fresh = _get(api, _url("rack")).headers["etag"]
    assert api.client.delete(_url("rack"), headers={**api.auth, "If-Match": fresh}).status_code == 409


# --------------------------------------------------------------------------- templates
TEMPLATE = f"{V1}/templates/preseed/site"
SOURCE = "d-i debian-installer/locale string en_US\n"


def _put(api: Api, text: str, **headers: str) -> httpx.Response:
    return api.client.put(TEMPLATE, content=text.encode(), headers={**api.auth, "content-type": "text/plain",
                                                                    **headers})


def test_template_etag_and_if_match(api) -> None:
    assert _put(api, SOURCE, **{"If-Match": "*"}).status_code == 412  # no such template yet
    r = _put(api, SOURCE)
    assert r.status_code == 200, r.text
    tag = r.headers["etag"]
    got = _get(api, TEMPLATE)
    assert got.text == SOURCE and got.headers["etag"] == tag
    assert _get(api, TEMPLATE, **{"If-None-Match": tag}).status_code == 304
    r = _put(api, SOURCE + "# two\n", **{"If-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] not in (tag, None)
    r = _put(api, SOURCE + "# three\n", **{"If-Match": tag})
    assert r.status_code == 412 and r.json()["error"] == "precondition_failed"
    assert _get(api, TEMPLATE).text == SOURCE + "# two\n"
    # A shipped template has an ETag too, and If-Match: * overrides it only while it exists.
    shipped = _get(api, f"{V1}/templates/preseed/default")
    assert shipped.status_code == 200 and shipped.headers["etag"] == etags.tag_of(shipped.content)


def test_an_upload_stored_differently_answers_no_etag(api) -> None:
    """CRLF line ends are read back as LF: the stored text is not the body sent, so no ETag (RFC 9110 9.3.4)."""
    r = _put(api, SOURCE.replace("\n", "\r\n"))
    assert r.status_code == 200 and "etag" not in r.headers


# --------------------------------------------------------------------------- concurrency
def _race(api: Api, send: Callable[[httpx.Client], httpx.Response], n: int = 2) -> list[httpx.Response]:
    """``n`` requests at once, each from its own thread."""
    barrier = threading.Barrier(n)
    out: list[httpx.Response] = []

    def go() -> None:
        barrier.wait()
        out.append(send(api.client))

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _slow(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, log: list[str], delay: float = 0.6) -> None:
    """``module.name`` sleeps before doing its work, and ``etags.lock_row`` notes who waits for it."""
    original = getattr(module, name)

    def slow(*args: Any, **kw: Any) -> Any:
        log.append("write")
        time.sleep(delay)
        result = original(*args, **kw)
        log.append("written")
        return result

    lock = etags.lock_row

    def noted(*args: Any, **kw: Any) -> Any:
        log.append("lock")
        return lock(*args, **kw)

    monkeypatch.setattr(module, name, slow)
    monkeypatch.setattr(etags, "lock_row", noted)


@pytest.mark.parametrize("kind", KINDS)
def test_two_clients_with_one_etag_exactly_one_wins(api, monkeypatch, kind: str) -> None:
    tag = _create(api, kind).headers["etag"]
    _, _, patch, other = OBJECTS[kind]
    log: list[str] = []
    _slow(monkeypatch, crud, f"update_{kind}", log)
    bodies = iter([patch, other])
    lock = threading.Lock()

    def send(client: TestClient) -> httpx.Response:
        with lock:
            body = next(bodies)
        r = client.patch(_url(kind), json=body, headers={**api.auth, "If-Match": tag})
        r.sent = body  # type: ignore[attr-defined]
        return r

    answers = _race(api, send)
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 412], [r.text for r in answers]
    # The loser asked for the lock before the winner had written: it waited, then saw the new ETag.
    locks = [i for i, step in enumerate(log) if step == "lock"]
    assert len(locks) == 2 and locks[1] < log.index("written") and log.count("write") == 1, log
    winner = next(r for r in answers if r.status_code == 200)
    final = _get(api, _url(kind))
    assert final.headers["etag"] == winner.headers["etag"]
    key, value = next(iter(winner.sent.items()))  # type: ignore[attr-defined]
    assert final.json()[key] == value


def test_without_the_lock_both_would_win(api, monkeypatch) -> None:
    """The control: the same race with lock_row disabled loses an update (so the tests above prove the lock)."""
    tag = _create(api, "rack").headers["etag"]
    log: list[str] = []
    _slow(monkeypatch, crud, "update_rack", log)
    monkeypatch.setattr(etags, "lock_row", lambda *a, **kw: None)
    sites = iter(["dc2", "dc3"])
    lock = threading.Lock()

    def send(client: TestClient) -> httpx.Response:
        with lock:
            site = next(sites)
        return client.patch(_url("rack"), json={"site": site}, headers={**api.auth, "If-Match": tag})

    assert sorted(r.status_code for r in _race(api, send)) == [200, 200]


def test_two_template_uploads_with_one_etag_exactly_one_wins(api, monkeypatch) -> None:
    tag = _put(api, SOURCE).headers["etag"]
    log: list[str] = []
    _slow(monkeypatch, templates_catalog, "upload", log)
    texts = iter([SOURCE + "# a\n", SOURCE + "# b\n"])
    lock = threading.Lock()

    def send(client: TestClient) -> httpx.Response:
        with lock:
            text = next(texts)
        return client.put(TEMPLATE, content=text.encode(),
                          headers={**api.auth, "content-type": "text/plain", "If-Match": tag})

    answers = _race(api, send)
    assert sorted(r.status_code for r in answers) == [200, 412], [r.text for r in answers]
    assert log.count("write") == 1, log
    winner = next(r for r in answers if r.status_code == 200)
    assert _get(api, TEMPLATE).headers["etag"] == winner.headers["etag"]


# --------------------------------------------------------------------------- X-Request-ID
@pytest.mark.parametrize("sent, kept", [
    ("abc-123", True), ("0f8fad5b-d9cb-469f-a165-70867728950e", True), ("Root=1-67891233-abcdef0123", True),
    ("x" * 128, True), ("x" * 129, False), ("has space", False), ('quo"te', False), ("", False),
    ("caf\u00e9", False), ("a\tb", False),
])
def test_request_id_is_echoed_when_safe_else_replaced(api, sent: str, kept: bool) -> None:
    r = api.client.get(f"{V1}/racks", headers={**api.auth, "X-Request-ID": sent.encode("latin-1")})  # type: ignore[dict-item]
    rid = r.headers["x-request-id"]
    assert (rid == sent) is kept
    if not kept:
        assert len(rid) == 32 and rid.isalnum()


def test_every_answer_has_a_request_id(api) -> None:
    seen = set()
    for r in (
        api.client.get(f"{V1}/racks"),  # 401
        api.client.get(f"{V1}/racks/none", headers=api.auth),  # 404
        api.client.get(f"{V1}/racks", params={"sight": "x"}, headers=api.auth),  # 422
        api.client.post(f"{V1}/racks", content=b"x" * (api.client.app.state.settings.max_body_bytes + 1),
                        headers={**api.auth, "content-type": "application/json"}),  # 413
        api.client.get("/healthz"),
        api.client.get("/no/such/path"),
        api.client.get(f"{V1}/racks", headers=api.auth),
    ):
        assert r.headers.get("x-request-id"), (r.status_code, r.headers)
        seen.add(r.headers["x-request-id"])
    assert len(seen) == 7  # a new one each time


def test_a_500_and_its_log_line_carry_the_request_id(settings: Settings) -> None:
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom", boom)
    buf = io.StringIO()
    handler = setup_logging("INFO", True, stream=buf)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.get("/boom", headers={"X-Request-ID": "trace-500"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-500"
    lines = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    assert any(line["msg"].startswith("unhandled error") and line.get("request_id") == "trace-500"
               for line in lines), lines


@pytest.mark.parametrize("json_lines", [True, False])
def test_log_lines_written_during_a_request_name_it(api, json_lines: bool) -> None:
    buf = io.StringIO()
    handler = setup_logging("INFO", json_lines, stream=buf)
    try:
        r = api.client.post(f"{V1}/hosts", json={"name": "h1"}, headers={**api.auth, "X-Request-ID": "trace-42"})
        logging.getLogger("provisioner.test").info("outside any request")
    finally:
        logging.getLogger().removeHandler(handler)
    assert r.status_code == 201
    lines = buf.getvalue().splitlines()
    enrolled = [ln for ln in lines if "host h1 enrolled" in ln]  # crud.create_host's line, on a route thread
    outside = [ln for ln in lines if "outside any request" in ln]
    assert len(enrolled) == 1 and len(outside) == 1, lines
    if json_lines:
        assert json.loads(enrolled[0])["request_id"] == "trace-42"
        assert "request_id" not in json.loads(outside[0])
    else:
        assert enrolled[0].endswith("[request_id=trace-42]")
        assert "request_id" not in outside[0]


# --------------------------------------------------------------------------- done elsewhere, checked here
def test_401_names_the_bearer_scheme_and_unknown_query_parameters_are_422(api) -> None:
    r = api.client.get(f"{V1}/racks/r1")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "unauthorized"
    r = api.client.get(f"{V1}/hosts", params={"stat": "available"}, headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "stat"
    r = api.client.get(f"{V1}/racks/r1", params={"fields": "name"}, headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "fields"


def test_list_filters_are_real(api, db) -> None:
    """Every filter the CLI offers (prov rack list --site, prov host list --state/--rack/--role/--power)."""
    for name, site in (("r1", "dc1"), ("r2", "dc2")):
        api.client.post(f"{V1}/racks", json={"name": name, "site": site}, headers=api.auth).raise_for_status()
    for name, rack, roles in (("h1", "r1", ["web"]), ("h2", "r2", ["db"]), ("h3", "r2", ["web"])):
        body = {"name": name, "rack": rack, "roles": roles}
        api.client.post(f"{V1}/hosts", json=body, headers=api.auth).raise_for_status()
    api.client.post(f"{V1}/hosts/h3/transition", json={"event": "maintain"}, headers=api.auth).raise_for_status()
    host = crud.get_host(db, "h2")
    host.power_state = "on"
    db.add(host)
    db.commit()

    def names(path: str, **params: str) -> list[str]:
        page = api.client.get(V1 + path, params=params, headers=api.auth).json()
        assert page["count"] == len(page["data"])
        return [row["name"] for row in page["data"]]

    assert names("/racks", site="dc2") == ["r2"]
    assert names("/hosts", rack="r2") == ["h2", "h3"]
    assert names("/hosts", role="web") == ["h1", "h3"]
    assert names("/hosts", state="maintenance") == ["h3"]
    assert names("/hosts", power_state="on") == ["h2"]
    assert names("/hosts", rack="r2", role="web") == ["h3"]


# --------------------------------------------------------------------------- the OpenAPI document
def test_the_document_says_all_of_it(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    validate(spec)
    paths = spec["paths"]
    singles = ["/api/v1/hosts/{host}", "/api/v1/racks/{rack}", "/api/v1/profiles/{profile}"]
    for path in singles:
        get = paths[path]["get"]
        assert "ETag" in get["responses"]["200"]["headers"] and "304" in get["responses"]
        assert any(p["name"] == "If-None-Match" and p["in"] == "header" for p in get["parameters"])
        for method in ("patch", "delete"):
            op = paths[path][method]
            assert any(p["name"] == "If-Match" and p["in"] == "header" for p in op["parameters"]), (path, method)
            assert op["responses"]["412"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
        assert "ETag" in paths[path]["patch"]["responses"]["200"]["headers"]
    put = paths["/api/v1/templates/{kind}/{name}"]["put"]
    assert "412" in put["responses"] and "ETag" in put["responses"]["200"]["headers"]
    assert "ETag" in paths["/api/v1/templates/{kind}/{name}"]["get"]["responses"]["200"]["headers"]
    for path in ("/api/v1/hosts", "/api/v1/racks", "/api/v1/profiles"):
        assert {"Location", "ETag"} <= set(paths[path]["post"]["responses"]["201"]["headers"])
    for path, item in paths.items():
        for method, op in item.items():
            assert any(p["name"] == "X-Request-ID" for p in op["parameters"]), (path, method)
            for code, response in op["responses"].items():
                assert "X-Request-ID" in response["headers"], (path, method, code)
    # the shared header dicts were not written into
    assert set(etags.ETAG_HEADER) == {"ETag"}
