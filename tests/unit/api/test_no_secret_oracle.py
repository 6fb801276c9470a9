# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""No unauthenticated reply tells whether a value is a stored secret (issue 18, item 6).

Error messages are masked by value, and they used to echo the caller's input: so
``GET /boot/ipxe/<guess>`` answered ``'********'`` exactly when the guess was a stored BMC
password. For every route outside /api/ (boot scripts, boot files, installer callbacks, health,
whatever is added later: the routes are read from the app), each path parameter, query parameter
and body field is sent once as a stored BMC password and once as a random value of the same
length and alphabet; the two replies must be byte-identical.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

import pytest

from provisioner import secret_store
from provisioner import states as S
from provisioner.conductor import install_tokens
from provisioner.models import Host
from tests.support.install import Api, add_host, api, db, settings  # noqa: F401

# Stored BMC passwords: a plain one, one shaped like a MAC address (it survives MAC validation),
# one shaped like a path.
PASSWORDS = ["Hunter2SecretPw9", "52-54-00-ab-cd-ef", "boot-Xy7.pwd"]


def _twin(secret: str, rng: random.Random) -> str:
    """A value of the same length and character classes that is no secret."""
    out = []
    for ch in secret:
        if ch in string.digits:
            out.append(rng.choice(string.digits))
        elif ch in "abcdef" and "-" in secret:  # keep a MAC-shaped secret MAC-shaped
            out.append(rng.choice("abcdef"))
        elif ch.isalpha():
            out.append(rng.choice(string.ascii_lowercase if ch.islower() else string.ascii_uppercase))
        else:
            out.append(ch)
    twin = "".join(out)
    return twin if twin != secret else _twin(secret, rng)


def _public_operations(app: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, OpenAPI operation) of every route outside /api/ (the OpenAPI
    document is the app's own, public, list of its routes and their parameters)."""
    for path, item in app.openapi()["paths"].items():
        if path.startswith("/api/"):
            continue
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path, op


def _requests(path: str, method: str, op: dict[str, Any], base: dict[str, str],
              value: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, request kwargs) with ``value`` in one place at a time; everything else valid."""
    params = op.get("parameters", [])
    path_names = [p["name"] for p in params if p["in"] == "path"]
    query_names = [p["name"] for p in params if p["in"] == "query"]

    def url(**override: str) -> str:
        out = path
        for name in path_names:
            out = out.replace(f"{{{name}}}", override.get(name, base.get(name, "x")))
        return out

    valid_query = {q: base[q] for q in query_names if q in base}
    body = {"event": "progress", "message": "hello", "progress": 5}
    valid_body = {"json": body} if "requestBody" in op else {}
    for name in path_names:
        yield f"path {name}", {"url": url(**{name: value}), "params": valid_query, **valid_body}
    for name in query_names:
        yield f"query {name}", {"url": url(), "params": {**valid_query, name: value}, **valid_body}
    yield "query (undeclared)", {"url": url(), "params": {**valid_query, value: value}, **valid_body}
    if "requestBody" in op:
        for key in body:
            yield f"body {key}", {"url": url(), "json": {**body, key: value}}
        yield "body (extra key)", {"url": url(), "json": {**body, value: 1}}
        yield "body (raw)", {"url": url(), "content": value.encode(), "headers": {"Content-Type": "application/json"}}


def _reply(api: Api, method: str, kw: dict[str, Any]) -> tuple[int, bytes, list[tuple[str, str]]]:
    r = api.client.request(method, kw.pop("url"), **kw)
    # Date and X-Request-ID (api/request_id.py: a new id per request) differ whatever was asked.
    headers = sorted((k, v) for k, v in r.headers.items() if k.lower() not in ("date", "x-request-id"))
    return r.status_code, r.content, headers


@pytest.fixture
def stored(db, settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """An installing host with a live token, a host that boots locally (its boot script is the same
    on every fetch; an install script carries a fresh token each time), and hosts whose BMC
    passwords are PASSWORDS."""
    host = add_host(db, method="autoinstall", state=S.INSTALLING)
    token = install_tokens.mint(db, host, settings)
    add_host(db, state=S.AVAILABLE, netboot=False, mac="52:54:00:10:20:30")
    for i, pw in enumerate(PASSWORDS):
        h = db.get(Host, add_host(db, state=S.AVAILABLE, netboot=False).id)
        assert h is not None
        h.bmc_address, h.bmc_port, h.bmc_username = "10.9.9.9", 6000 + i, "admin"
        h.bmc_password_enc = secret_store.encrypt(pw, settings)  # registers it with the masker too
        db.add(h)
        db.commit()
    return {"token": token, "mac": "52:54:00:10:20:30", "path": "undionly.kpxe", "event": "progress"}


@pytest.mark.parametrize("secret", PASSWORDS)
def test_public_replies_are_the_same_for_a_stored_password_and_any_other_value(api, stored, secret) -> None:
    rng = random.Random(secret)
    operations = list(_public_operations(api.client.app))
    assert {p for _, p, _ in operations} >= {"/boot/ipxe/{mac}", "/boot/files/{path}", "/install/v1/{token}/events"}
    differences = []
    tried = 0
    for method, path, op in operations:
        twin = _twin(secret, rng)
        for (label, with_secret), (_, with_twin) in zip(_requests(path, method, op, stored, secret),
                                                        _requests(path, method, op, stored, twin), strict=True):
            a, b = _reply(api, method, with_secret), _reply(api, method, with_twin)
            tried += 1
            if a != b:
                differences.append(f"{method} {path} ({label}): {a[0]} {a[1][:160]!r} != {b[0]} {b[1][:160]!r}")
    assert tried > 30
    assert not differences, "\n".join(differences)


def test_operator_replies_still_name_what_was_asked_for(api) -> None:
    """The echo is removed only where no operator token is needed: the CLI's errors stay useful."""
    r = api.client.get("/api/v1/hosts/no-such-host", headers=api.auth)
    assert r.status_code == 404 and "no-such-host" in r.json()["message"]
