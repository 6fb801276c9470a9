# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""No reply tells whether a value is a stored secret (issue 18, item 6 and the operator routes).

Error messages are masked by value, and they used to echo the caller's input: so
``GET /boot/ipxe/<guess>`` answered ``'********'`` exactly when the guess was a stored BMC
password. For every route outside /api/ (boot scripts, boot files, installer callbacks, health,
whatever is added later: the routes are read from the app), each path parameter, query parameter
and body field is sent once as a stored BMC password and once as a random value of the same
length and alphabet; the two replies must be byte-identical. The operator routes (every route
under /api/v1, read from the same document) may echo what they were asked about, so there the
reply for the password, the password swapped for the other value, must be the other's reply.
"""

from __future__ import annotations

import json
import random
import re
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
            # a zero stays a zero and no other digit becomes one: a raw body is read as JSON, and
            # "05..." stops the parser a column earlier than "52..." (a reply that differs by shape)
            out.append("0" if ch == "0" else rng.choice(string.digits[1:]))
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


# --------------------------------------------------------------------------- operator routes
# The operator routes echo what was asked for (``host 'web01' not found``), so their replies are
# compared with the value swapped: the reply for a stored password, with the password replaced by
# its twin, must be the reply for the twin, byte for byte. Every operator route of the OpenAPI
# document, each path parameter, query parameter (declared or not) and string field of the JSON
# body (alone, and on a valid body), the raw body, a body key, and a template whose syntax error
# quotes the value; the database is restored after every request that changed it, so each pair of
# requests meets the same state.
PATH_VALUES = {"host": "h1", "rack": "r1", "profile": "p1", "name": "g1", "kind": "kickstart",
               "task_id": "1", "token_id": "1"}
# Valid bodies (beside ``{}``) for the routes whose body has required fields, so that a value in
# one field reaches the route itself (``profile 'x' not found``), not only the body's validation.
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/hosts"): {"name": "hx1", "rack": "r1", "profile": "p1"},
    ("PATCH", "/api/v1/hosts/{host}"): {"rack": "r1", "profile": "p1"},
    ("POST", "/api/v1/racks"): {"name": "rx1"},
    ("POST", "/api/v1/profiles"): {"name": "px1"},
    ("POST", "/api/v1/tokens"): {"name": "tx1", "scopes": ["viewer"]},
    ("POST", "/api/v1/hosts/{host}/guests"): {"name": "gx1"},
    ("POST", "/api/v1/hosts/{host}/transition"): {"event": "retire"},
    ("POST", "/api/v1/hosts/{host}/power"): {"action": "status"},
}
# Headers that differ between any two requests.
_PER_REQUEST = {"date", "x-request-id", "etag", "last-modified"}


def _operator_operations(app: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in app.openapi()["paths"].items():
        if path.startswith("/api/v1/"):
            for method, op in item.items():
                if method in ("get", "post", "put", "patch", "delete") and not _streams(op):
                    yield method.upper(), path, op


def _streams(op: dict[str, Any]) -> bool:
    """An event stream never ends, so it has no whole reply to compare (its 422s are checked in
    tests/integration/api/test_events_stream_live.py)."""
    return "text/event-stream" in op.get("responses", {}).get("200", {}).get("content", {})


def _string_fields(schema: dict[str, Any], doc: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[
        tuple[Any, ...]]:
    """Paths of the string fields of a JSON body schema (list items as index 0)."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            yield from _string_fields(option, doc, path)
    if len(path) > 5:
        return
    kind = schema.get("type")
    if "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from _string_fields(sub, doc, (*path, name))
    elif kind == "array" and "items" in schema:
        yield from _string_fields(schema["items"], doc, (*path, 0))
    elif kind == "string" and path:
        yield path


def _with(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """``body`` with ``value`` at ``path`` (list items as index 0; containers created as needed)."""
    def put(node: Any, rest: tuple[Any, ...]) -> Any:
        if not rest:
            return value
        seg, *more = rest
        if isinstance(seg, int):
            return [put(None, tuple(more))]
        out = dict(node) if isinstance(node, dict) else {}
        out[seg] = put(out.get(seg), tuple(more))
        return out

    return put(body, path)  # type: ignore[no-any-return]


def _operator_requests(method: str, path: str, op: dict[str, Any], doc: dict[str, Any],
                       value: str) -> Iterator[tuple[str, dict[str, Any]]]:
    params = op.get("parameters", [])
    path_names = [p["name"] for p in params if p["in"] == "path"]
    query_names = [p["name"] for p in params if p["in"] == "query"]

    def url(**override: str) -> str:
        out = path
        for name in path_names:
            out = out.replace(f"{{{name}}}", override.get(name, PATH_VALUES.get(name, "x1")))
        return out

    content = op.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    bases = [{}, *([VALID_BODIES[(method, path)]] if (method, path) in VALID_BODIES else [])]
    body = {"json": bases[-1]} if schema is not None else {}
    for name in path_names:
        yield f"path {name}", {"url": url(**{name: value}), **body}
    for name in query_names:
        yield f"query {name}", {"url": url(), "params": {name: value}, **body}
    yield "query (undeclared name)", {"url": url(), "params": {value: "1"}, **body}
    yield "query (undeclared value)", {"url": url(), "params": {"bogus": value}, **body}
    if schema is not None:
        for field in _string_fields(schema, doc):
            for i, base in enumerate(bases):
                yield f"body {field} on body {i}", {"url": url(), "json": _with(base, field, value)}
        yield "body (key)", {"url": url(), "json": {**bases[-1], value: "1"}}
        yield "body (raw)", {"url": url(), "content": value.encode(), "headers": {"Content-Type": "application/json"}}
    if "text/plain" in content:  # a template: its syntax errors quote the offending token
        for source in (f"{{{{ a {value} }}}}", f"{{% {value} %}}", value):
            yield f"template {source!r}", {"url": url(), "content": source.encode(),
                                          "headers": {"Content-Type": "text/plain"}}


class _Database:
    """The app's SQLite database, saved once and put back (sqlite3's online backup) when changed."""

    def __init__(self, settings: Any) -> None:
        import sqlite3

        self.path = str(settings.data_dir / "prov.db")
        self.saved = sqlite3.connect(":memory:", check_same_thread=False)
        with sqlite3.connect(self.path) as live:
            live.backup(self.saved)

    def restore(self) -> None:
        import sqlite3

        live = sqlite3.connect(self.path, timeout=30)
        try:
            self.saved.backup(live)
        finally:
            live.close()


@pytest.fixture
def operator_state(api, stored) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Objects the paths name (rack r1, profile p1, host h1), besides the hosts with stored passwords."""
    for path, body in (("/api/v1/racks", {"name": "r1", "site": "dc1"}),
                       ("/api/v1/profiles", {"name": "p1"}),
                       ("/api/v1/hosts", {"name": "h1", "rack": "r1", "profile": "p1",
                                          "nics": [{"mac": "52:54:00:ee:ee:01", "name": "eth0"}]})):
        r = api.client.post(path, json=body, headers=api.auth)
        assert r.status_code == 201, r.text
    return stored


def _swapped(text: str, secret: str, twin: str) -> str:
    """``text`` with ``secret`` as a message may quote it replaced by ``twin``'s: whole, as sent or
    case-folded, or one of its words in quotes (a template's syntax error quotes the token it
    stopped at)."""
    for a, b in ((secret, twin), (secret.lower(), twin.lower()), (secret.upper(), twin.upper())):
        text = text.replace(a, b)
    words = zip(re.split(r"[^A-Za-z0-9]+", secret), re.split(r"[^A-Za-z0-9]+", twin), strict=True)
    for a, b in words:
        text = text.replace(f"'{a}'", f"'{b}'")
    return text


def _operator_reply(api: Api, method: str, kw: dict[str, Any]) -> tuple[int, str, list[tuple[str, str]]]:
    kw = dict(kw)
    r = api.client.request(method, kw.pop("url"), headers={**api.auth, **kw.pop("headers", {})}, **kw)
    headers = sorted((k, v) for k, v in r.headers.items() if k.lower() not in _PER_REQUEST)
    return r.status_code, r.text, headers


@pytest.mark.parametrize("secret", PASSWORDS)
def test_operator_replies_are_the_same_for_a_stored_password_and_any_other_value(
        api, operator_state, settings, db, secret) -> None:  # type: ignore[no-untyped-def]
    from tests.support.install import wait_tasks

    rng = random.Random(f"operator {secret}")
    doc = api.client.app.openapi()
    operations = list(_operator_operations(api.client.app))
    assert len(operations) > 40
    database = _Database(settings)
    differences, echoed, tried = [], 0, 0
    for method, path, op in operations:
        twin = _twin(secret, rng)
        for (label, with_secret), (_, with_twin) in zip(_operator_requests(method, path, op, doc, secret),
                                                        _operator_requests(method, path, op, doc, twin),
                                                        strict=True):
            replies = []
            for kw in (with_secret, with_twin):
                replies.append(_operator_reply(api, method, kw))
                if method != "GET" and replies[-1][0] < 400:  # it changed something: put it back
                    wait_tasks(db)
                    database.restore()
            (sa, ta, ha), (sb, tb, hb) = replies
            tried += 1
            echoed += secret in ta and sa >= 400
            if sa != sb or (sa >= 400 and (_swapped(ta, secret, twin), ha) != (tb, hb)):
                differences.append(f"{method} {path} ({label}): {sa} {ta[:200]} != {sb} {tb[:200]}")
    assert tried > 300
    assert echoed > 20  # the routes do echo what they were asked about: the comparison means something
    assert not differences, f"{len(differences)} replies tell a stored password from another value:\n" + \
        "\n".join(differences[:30])


def test_a_reply_masks_only_what_its_request_did_not_carry() -> None:
    """secret_store.mask(told=...): a known secret the request carried, in any spelling a message
    gives it, stays; one it did not carry (the server's own text) is masked as before."""
    secret_store.register("Stored\\Secret-77")
    told = secret_store.Told(lambda: ["/api/v1/hosts/stored\\secret-77", 'name=Stored\\Secret-77"'])
    assert secret_store.mask("host 'Stored\\Secret-77' not found", told) == "host 'Stored\\Secret-77' not found"
    # repr() doubles the backslash ({name!r}), JSON escapes it, .upper() folds it: still what was sent
    for quoted in (repr("Stored\\Secret-77"), json.dumps("Stored\\Secret-77"), "STORED\\SECRET-77"):
        secret_store.register(quoted.strip("'\""))
        assert secret_store.mask(f"x {quoted} y", told) == f"x {quoted} y"
    assert secret_store.mask("BMC refused Stored\\Secret-77", secret_store.NOBODY) == "BMC refused ********"
    other = secret_store.Told(lambda: ["/api/v1/hosts/web01"])
    assert secret_store.mask("BMC refused Stored\\Secret-77", other) == "BMC refused ********"
    # shapes are masked whoever sent them: the same for every value of the shape
    assert secret_store.mask("GET /install/v1/12.abc HTTP/1.1", secret_store.Told(lambda: ["12.abc"])) == \
        "GET /install/v1/******** HTTP/1.1"
