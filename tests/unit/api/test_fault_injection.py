"""Fault injection on every operator route (issue 18): hostile input is refused and changes nothing.

The routes and their bodies are read from the app's own OpenAPI document, so a new route or
field is covered without an edit here. For each operator route (every method under /api/v1)
the tests send what a careless client or an attacker sends - duplicate keys, numbers as
strings and booleans as numbers, control and bidirectional-control characters in every
string, strings over their limit, fields and query parameters the route does not have,
malformed or non-UTF-8 JSON, NaN, huge numbers, absurd nesting, and all of it without a
token - and assert the documented answer: 401 with ``WWW-Authenticate: Bearer`` when the
token is missing or wrong (whatever the body), else 422 in the error envelope naming the
field, never echoing the offending character; and every table's rows are the same after
as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import SQLModel

from provisioner.auth import hash_token
from provisioner.conductor import engine
from provisioner.db import get_engine
from provisioner.models import ApiToken
from provisioner.settings import Settings
from tests.support.install import make_settings

PREFIX = "/api/v1"
WRITE = ("post", "put", "patch", "delete")
TOKEN = "fault-injection-token-0123456789"
# Objects the paths name: they exist, so nothing is refused for a missing object.
PATH_VALUES = {"host": "h1", "rack": "r1", "profile": "p1", "name": "g1", "kind": "kickstart",
               "task_id": "1", "token_id": "1"}
# Characters no stored text may hold (validators.text_problem), as JSON escapes.
HOSTILE_CHARS = {
    "NUL": "\x00", "ESC": "\x1b", "BEL": "\x07", "DEL": "\x7f", "C1 NEL": "\x85",
    "RLO U+202E": "\u202e", "LRE U+202A": "\u202a", "RLI U+2067": "\u2067", "PDI U+2069": "\u2069",
    "lone surrogate": "\ud800",
}
# Fields that are one line of text: a line break is refused there too.
ONE_LINE_FIELDS = [
    ("post", "/racks", ("site",)), ("patch", "/racks/{rack}", ("site",)),
    ("post", "/hosts", ("name",)), ("post", "/hosts", ("nics", 0, "name")),
    ("post", "/hosts", ("bmc", "username")), ("post", "/hosts", ("bmc", "password")),
    ("patch", "/hosts/{host}", ("bmc", "username")), ("post", "/hosts/{host}/transition", ("message",)),
    ("post", "/profiles", ("kernel_args",)), ("post", "/profiles", ("kernel_url",)),
    ("patch", "/profiles/{profile}", ("kernel_args",)), ("post", "/profiles", ("template",)),
]

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------- the app and its data
@dataclass
class Env:
    client: TestClient
    settings: Settings
    auth: dict[str, str]

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in primary-key order."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with get_engine(self.settings).connect() as conn:
            for table in SQLModel.metadata.sorted_tables:
                if table.name == "cluster_member":  # this process's heartbeat writes there on its own
                    continue
                order = list(table.primary_key.columns) or list(table.columns)
                out[table.name] = [tuple(r) for r in conn.execute(select(table).order_by(*order)).all()]
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from provisioner.api.app import create_app

    settings = make_settings(Path(tmp_path_factory.mktemp("fault")) / "data", drift_check_interval=0.0)
    settings.ensure_dirs()
    SQLModel.metadata.create_all(get_engine(settings))
    engine.stop()
    engine.start(settings)
    from sqlmodel import Session

    with Session(get_engine(settings)) as db:
        db.add(ApiToken(name="fault", token_hash=hash_token(TOKEN)))
        db.commit()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings)) as client:
        for path, body in (("/racks", {"name": "r1", "site": "dc1"}),
                           ("/profiles", {"name": "p1"}),
                           ("/hosts", {"name": "h1", "rack": "r1", "profile": "p1",
                                       "nics": [{"mac": "52:54:00:00:00:01", "name": "eth0"}]})):
            r = client.post(PREFIX + path, json=body, headers=auth)
            assert r.status_code == 201, r.text
        yield Env(client=client, settings=settings, auth=auth)
    engine.stop()


@dataclass(frozen=True)
class Op:
    method: str
    path: str  # under /api/v1, with {params}
    body: dict[str, Any] | None  # the JSON body's schema (None: the route takes no JSON body)
    query: frozenset[str]

    @property
    def url(self) -> str:
        return PREFIX + re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "x1"), self.path)

    def __str__(self) -> str:
        return f"{self.method.upper()} {PREFIX}{self.path}"


def operations(env: Env, methods: tuple[str, ...] = WRITE) -> list[Op]:
    doc = env.client.app.openapi()  # type: ignore[attr-defined]
    ops = []
    for path, items in doc["paths"].items():
        if not path.startswith(PREFIX + "/"):
            continue
        for method, op in items.items():
            if method not in methods:
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            query = frozenset(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
            ops.append(Op(method, path.removeprefix(PREFIX), body, query))
    assert len(ops) > 10, "the OpenAPI document lists too few operator routes"
    return ops


# --------------------------------------------------------------------------- bodies from schemas
@dataclass(frozen=True)
class Leaf:
    path: Path_
    kind: str  # string | integer | number | boolean | map (an object of free keys) | object
    max_length: int | None = None


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(s, doc).get("type") != "null"]
            if options:
                return _resolve(options[0], doc)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _resolve(schema["allOf"][0], doc)
    return schema


def leaves(schema: dict[str, Any], doc: dict[str, Any], path: Path_ = ()) -> Iterator[Leaf]:
    s = _resolve(schema, doc)
    kind = s.get("type")
    if len(path) > 6:
        return
    if "properties" in s:
        yield Leaf(path, "object")
        for name, sub in s["properties"].items():
            yield from leaves(sub, doc, (*path, name))
    elif kind == "object":
        if path:
            yield Leaf(path, "map")
    elif kind == "array" and "items" in s:
        yield from leaves(s["items"], doc, (*path, 0))
    elif kind in ("string", "integer", "number", "boolean"):
        yield Leaf(path, kind, s.get("maxLength"))


def nest(path: Path_, value: Any) -> Any:
    for seg in reversed(path):
        value = [value] if isinstance(seg, int) else {seg: value}
    return value


def field_name(path: Path_) -> str:
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else seg)
    return out or "body"


def raw(value: Any) -> bytes:
    # ensure_ascii: a lone surrogate travels as the \ud800 escape a hostile client would send
    return json.dumps(value, ensure_ascii=True).encode()


def dup_json(path: Path_) -> bytes:
    """A body whose object at ``path`` repeats the key ``path[-1]``."""
    *outer, key = path
    inner = f'{{{json.dumps(key)}: 1, {json.dumps(key)}: 2}}'
    text = inner
    for seg in reversed(outer):
        text = f"[{text}]" if isinstance(seg, int) else f'{{{json.dumps(seg)}: {text}}}'
    return text.encode()


# --------------------------------------------------------------------------- asserting
JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class Checker:
    env: Env
    failures: list[str]

    def send(self, op: Op, content: bytes | None, *, auth: bool = True, query: str = "",
             headers: dict[str, str] | None = None) -> Any:
        h = {**JSON_HEADERS, **(headers or {}), **(self.env.auth if auth else {})}
        return self.env.client.request(op.method.upper(), op.url + query, content=content, headers=h)

    def refused(self, op: Op, what: str, content: bytes | None, field: str | None, *, query: str = "",
                hostile: str | None = None) -> None:
        r = self.send(op, content, query=query)
        where = f"{op}: {what}"
        if r.status_code != 422:
            self.failures.append(f"{where}: {r.status_code} {r.text[:200]}")
            return
        body = r.json()
        fields = [e.get("field") for e in body.get("errors", [])]
        if body.get("error") != "invalid_input" or not body.get("message"):
            self.failures.append(f"{where}: not the error envelope: {body}")
        elif field is not None and field not in fields:
            self.failures.append(f"{where}: names {fields}, not {field!r}")
        if hostile is not None and (hostile in r.text or json.dumps(hostile)[1:-1] in r.text):
            self.failures.append(f"{where}: the reply echoes the refused character")

    def done(self) -> None:
        assert not self.failures, f"{len(self.failures)} wrong answers:\n" + "\n".join(self.failures[:40])


@pytest.fixture
def check(env: Env) -> Iterator[Checker]:
    before = env.dump()
    checker = Checker(env, [])
    yield checker
    assert env.dump() == before, "a refused request changed the database"


def _body_ops(env: Env) -> list[tuple[Op, list[Leaf]]]:
    doc = env.client.app.openapi()  # type: ignore[attr-defined]
    return [(op, list(leaves(op.body, doc))) for op in operations(env) if op.body is not None]


# --------------------------------------------------------------------------- the cases
def test_no_token_is_401_whatever_the_request_carries(env: Env, check: Checker) -> None:
    """Auth comes before any look at the input: malformed JSON, duplicate keys, wrong types and
    unknown query parameters all get the 401 a bare unauthenticated request gets."""
    hostile = [(b'{"name": ', ""), (b'{"a": 1, "a": 2}', ""), (b'{"size_u": "42", "port": true}', "?bogus=1"),
               (b"\xff\xfe", ""), (b"[" * 2000, ""), (None, "?limit=abc")]
    for op in operations(env, methods=("get", *WRITE)):
        for content, query in hostile:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
                r = check.send(op, content, auth=False, query=query, headers=headers)
                answer = (r.status_code, r.headers.get("www-authenticate"), r.json().get("error"))
                if answer != (401, "Bearer", "unauthorized"):
                    who = headers.get("Authorization", "no token")
                    check.failures.append(f"{op} {who} {content!r:.30}: {r.status_code} {r.text[:120]}")
    check.done()


def test_malformed_json_is_refused_naming_the_body(env: Env, check: Checker) -> None:
    cases = {"truncated": b'{"name": "x"', "trailing comma": b'{"a": 1,}', "not JSON": b"name=x",
             "two documents": b'{} {}', "non-UTF-8": b'{"name": "\xff"}', "UTF-16": '{"a": 1}'.encode("utf-16"),
             "BOM": b'\xef\xbb\xbf{"a": 1}', "NaN": b'{"a": NaN}', "Infinity": b'{"a": -Infinity}',
             "1e999": b'{"a": 1e999}', "5000 digits": b'{"a": ' + b"9" * 5000 + b"}",
             "deep nesting": b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"}
    for op in operations(env):
        for what, content in cases.items():
            check.refused(op, what, content, None)
    check.done()


def test_duplicate_keys_are_refused_naming_the_key(env: Env, check: Checker) -> None:
    """Python's json keeps the last of two equal keys; prov refuses both, at any depth."""
    for op, fields in _body_ops(env):
        paths = [leaf.path for leaf in fields if leaf.path and isinstance(leaf.path[-1], str)]
        for path in paths:
            check.refused(op, f"duplicate {field_name(path)}", dup_json(path), field_name(path))
    for op in operations(env):
        if op.body is None:
            check.refused(op, "duplicate key", b'{"a": 1, "a": 2}', "a")
    check.done()


def test_numbers_and_booleans_must_be_json_numbers_and_booleans(env: Env, check: Checker) -> None:
    """Strict types: "623", true and 1.0 are not integers; 0, 1 and "true" not booleans."""
    wrong = {"integer": ["623", True, 1.0, 1.5, 1e2],
             "number": ["1.5", True, "NaN"],
             "boolean": [0, 1, "true", "yes", 1.0],
             "string": [5, True, ["x"], {"a": "b"}]}
    for op, fields in _body_ops(env):
        for leaf in fields:
            for value in wrong.get(leaf.kind, []):
                check.refused(op, f"{field_name(leaf.path)}={value!r}", raw(nest(leaf.path, value)),
                              field_name(leaf.path))
    check.done()


def test_control_and_bidi_characters_are_refused_in_every_string(env: Env, check: Checker) -> None:
    """NUL, ESC, DEL, C1, the bidi embedding/override/isolate controls and lone surrogates: in
    every string field, in free-form maps (values and keys); named by code point, never echoed."""
    for op, fields in _body_ops(env):
        for leaf in fields:
            for label, ch in HOSTILE_CHARS.items():
                if leaf.kind == "string":
                    check.refused(op, f"{label} in {field_name(leaf.path)}", raw(nest(leaf.path, f"ab{ch}cd")),
                                  field_name(leaf.path), hostile=ch)
                elif leaf.kind == "map":
                    check.refused(op, f"{label} in a value of {field_name(leaf.path)}",
                                  raw(nest((*leaf.path, "k"), [f"x{ch}"])), field_name((*leaf.path, "k", 0)),
                                  hostile=ch)
                    check.refused(op, f"{label} in a key of {field_name(leaf.path)}",
                                  raw(nest((*leaf.path, f"k{ch}"), 1)), field_name(leaf.path), hostile=ch)
    check.done()


@pytest.mark.parametrize(("method", "path", "field"), ONE_LINE_FIELDS,
                         ids=[f"{m} {p} {field_name(f)}" for m, p, f in ONE_LINE_FIELDS])
def test_line_breaks_are_refused_in_one_line_fields(env: Env, check: Checker, method: str, path: str,
                                                    field: Path_) -> None:
    op = next((o for o in operations(env) if o.method == method and o.path == path), None)
    assert op is not None, f"no route {method} {path}"
    for brk in ("\n", "\r", "\u2028", "\u2029"):
        check.refused(op, f"{brk!r} in {field_name(field)}", raw(nest(field, f"a{brk}b")), field_name(field),
                      hostile=brk)
    check.done()


def test_strings_over_their_limit_are_refused(env: Env, check: Checker) -> None:
    for op, fields in _body_ops(env):
        for leaf in fields:
            if leaf.kind == "string" and leaf.max_length is not None:
                check.refused(op, f"{field_name(leaf.path)} of {leaf.max_length + 1}",
                              raw(nest(leaf.path, "a" * (leaf.max_length + 1))), field_name(leaf.path))
    check.done()


def test_unknown_fields_are_refused_at_every_level(env: Env, check: Checker) -> None:
    for op, fields in _body_ops(env):
        for leaf in fields:
            if leaf.kind == "object":
                path = (*leaf.path, "surprise")
                check.refused(op, f"unknown {field_name(path)}", raw(nest(path, 1)), field_name(path))
    for op in operations(env):
        if op.body is None:
            check.refused(op, "a body where none is taken", raw({"surprise": 1}), "surprise")
    check.done()


def test_unknown_query_parameters_are_refused_naming_them(env: Env, check: Checker) -> None:
    """On every operator route, reads included (``GET /racks?sight=dc2`` is a typo, not a filter)."""
    for op in operations(env, methods=("get", *WRITE)):
        for name in ("bogus", "sight", "limit_", "LIMIT"):
            if name in op.query:
                continue
            check.refused(op, f"?{name}=1", None, name, query=f"?{name}=1")
        check.refused(op, "an unknown parameter named with ESC", None, None, query="?a%1Bb=1", hostile="\x1b")
    check.done()


def test_refused_characters_in_query_and_path_values_are_refused_naming_them(env: Env, check: Checker) -> None:
    """A NUL in ``?host=`` or in ``/hosts/{host}`` reached PostgreSQL, which refuses it in any
    text (a 500): path and query values follow the one-line text rule."""
    for op in operations(env, methods=("get", *WRITE)):
        for label, escaped in (("NUL", "%00"), ("ESC", "%1B"), ("RLO", "%E2%80%AE"), ("LF", "%0A")):
            for name in sorted(op.query):
                check.refused(op, f"{label} in ?{name}", None, name, query=f"?{name}=a{escaped}b")
            params = re.findall(r"\{(\w+)\}", op.path)
            if params:
                bad = Op(op.method, op.path.replace("{" + params[0] + "}", f"a{escaped}b", 1), op.body, op.query)
                check.refused(bad, f"{label} in {{{params[0]}}}", None, params[0])
    check.done()
