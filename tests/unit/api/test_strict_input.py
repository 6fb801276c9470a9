# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""Loose input, tightened (issue 18, item 9): what the operator API now takes and refuses.

The hostile variations of every route are in test_fault_injection.py; these are the
behaviours an operator sees: the rack site filter, a host without a BMC is a manual one
that verifies, an IPMI/Redfish BMC needs an address, strict JSON types still take the
strings JSON has for enums and datetimes, and the actor written to history fits its column.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from provisioner.api.deps import CONTEXT_HEADER, actor_label
from provisioner.models import ApiToken, Event
from provisioner.schemas import ACTOR_MAX
from tests.support.install import api, db, settings  # noqa: F401

V1 = "/api/v1"


def _post(api, path, body, **kw):
    return api.client.post(V1 + path, json=body, headers=api.auth, **kw)


def test_rack_list_filters_by_site(api) -> None:
    for name, site in (("r1", "dc1"), ("r2", "dc2"), ("r3", "dc2"), ("r4", "")):
        assert _post(api, "/racks", {"name": name, "site": site}).status_code == 201
    page = api.client.get(f"{V1}/racks", params={"site": "dc2"}, headers=api.auth).json()
    assert [r["name"] for r in page["data"]] == ["r2", "r3"] and page["count"] == 2
    page = api.client.get(f"{V1}/racks", params={"site": "nowhere"}, headers=api.auth).json()
    assert page["data"] == [] and page["count"] == 0
    assert api.client.get(f"{V1}/racks", headers=api.auth).json()["count"] == 4
    r = api.client.get(f"{V1}/racks", params={"sight": "dc2"}, headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "sight"


def test_a_host_without_bmc_is_manual_and_verifies(api) -> None:
    r = _post(api, "/hosts", {"name": "h1", "nics": [{"mac": "52:54:00:00:00:01"}]})
    assert r.status_code == 201, r.text
    assert r.json()["bmc"]["kind"] == "manual" and r.json()["bmc"]["address"] is None
    v = api.client.post(f"{V1}/hosts/h1/verify", headers=api.auth)
    assert v.status_code == 200 and v.json()["state"] == "available", v.text


@pytest.mark.parametrize("bmc", [{}, {"kind": "ipmi"}, {"kind": "redfish", "username": "admin"},
                                 {"port": 623}])
def test_a_network_bmc_needs_an_address(api, bmc) -> None:
    r = _post(api, "/hosts", {"name": "h1", "bmc": bmc})
    assert r.status_code == 422 and r.json()["field"] == "bmc.address", r.text
    assert api.client.get(f"{V1}/hosts", headers=api.auth).json()["count"] == 0


def test_patching_a_manual_host_to_ipmi_needs_an_address(api) -> None:
    assert _post(api, "/hosts", {"name": "h1"}).status_code == 201
    r = api.client.patch(f"{V1}/hosts/h1", json={"bmc": {"kind": "ipmi"}}, headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "bmc.address", r.text
    assert api.client.get(f"{V1}/hosts/h1", headers=api.auth).json()["bmc"]["kind"] == "manual"
    r = api.client.patch(f"{V1}/hosts/h1", json={"bmc": {"kind": "ipmi", "address": "10.0.0.9"}}, headers=api.auth)
    assert r.status_code == 200 and r.json()["bmc"]["port"] == 623, r.text


def test_strict_json_still_takes_enum_and_datetime_strings(api, db) -> None:
    assert _post(api, "/hosts", {"name": "h1"}).status_code == 201
    # an enum (PowerAction) from its JSON string: a manual host asks the operator
    r = _post(api, "/hosts/h1/power", {"action": "on", "wait": False})
    assert r.status_code == 200 and r.json()["action"] == "on", r.text
    assert _post(api, "/hosts/h1/power", {"action": "on", "wait": 0}).json()["field"] == "wait"
    # a datetime from its JSON string, where a route takes one
    soon = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = _post(api, "/tokens", {"name": "ci", "scopes": ["viewer"], "expires_at": soon})
    if r.status_code != 404:  # the token routes are mounted
        assert r.status_code == 201, r.text


def test_duplicate_keys_are_named_by_their_path(api) -> None:
    headers = {**api.auth, "content-type": "application/json"}
    cases = {b'{"name": "h1", "bmc": {"kind": "manual", "kind": "ipmi"}}': "bmc.kind",
             b'{"name": "h1", "nics": [{"mac": "52:54:00:00:00:01"}, {"mac": "52:54:00:00:00:02", "mac": "x"}]}':
                 "nics[1].mac",
             b'{"name": "h1", "name": "h2"}': "name"}
    for content, field in cases.items():
        r = api.client.post(f"{V1}/hosts", content=content, headers=headers)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert api.client.get(f"{V1}/hosts", headers=api.auth).json()["count"] == 0


def test_tabs_and_multiline_free_text_still_pass(api) -> None:
    """What the rules leave alone: a tab in a message, line breaks inside free-form params,
    a trailing newline around a name (stripped, as any outer blank)."""
    r = _post(api, "/profiles", {"name": "p1\n", "params": {"motd": "line one\nline two\n"}})
    assert r.status_code == 201 and r.json()["name"] == "p1", r.text
    assert _post(api, "/hosts", {"name": "h1"}).status_code == 201
    r = _post(api, "/hosts/h1/transition", {"event": "maintain", "message": "disk\treplaced"})
    assert r.status_code == 200, r.text


def test_the_actor_fits_its_column() -> None:
    name = "token:" + "n" * 64
    assert actor_label(name, "") == name
    long = actor_label(name, "git:" + "c" * 52)
    assert len(long) <= ACTOR_MAX and long.startswith(name + " (git:") and long.endswith(")")
    assert actor_label("token:ci", "abc") == "token:ci (abc)"
    assert actor_label("token:" + "x" * 200, "ctx") == ("token:" + "x" * 200)[:ACTOR_MAX]


def test_history_written_with_a_long_name_and_context_fits(api, db) -> None:
    from provisioner.auth import hash_token

    token = "long-name-token-0123456789abcdef"
    db.add(ApiToken(name="n" * 64, token_hash=hash_token(token)))
    db.commit()
    headers = {"Authorization": f"Bearer {token}", CONTEXT_HEADER: "git:" + "c" * 60}
    assert api.client.post(f"{V1}/hosts", json={"name": "h1"}, headers=headers).status_code == 201
    r = api.client.post(f"{V1}/hosts/h1/transition", json={"event": "maintain"}, headers=headers)
    assert r.status_code == 200, r.text
    db.expire_all()
    actors = [e.actor for e in db.exec(select(Event)).all()]
    assert actors and all(len(a) <= ACTOR_MAX for a in actors), actors
    assert any(a.startswith("token:" + "n" * 64 + " (git:") for a in actors), actors


def test_the_body_check_leaves_the_route_visible_to_the_outer_middleware(api) -> None:
    """The guard reads JSON bodies before routing; the metrics still name the route template."""
    assert _post(api, "/hosts", {"name": "h1"}).status_code == 201
    assert _post(api, "/hosts", {"name": "h2", "netboot": 1}).status_code == 422
    text = api.client.get("/metrics", headers=api.auth).text
    assert 'prov_http_requests_total{method="POST",route="/api/v1/hosts",status="201"} 1.0' in text
    assert 'prov_http_requests_total{method="POST",route="/api/v1/hosts",status="422"} 1.0' in text
