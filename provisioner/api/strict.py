"""Strict input on the operator API (issue 18, item 9): what every /api/v1 request must pass.

Two parts, so that an unauthenticated caller always hears 401 first, whatever its body:

* ``JsonBodyGuard`` (ASGI middleware, inside the body-size limit) reads a JSON body of an
  /api/v1 write request once and checks it: UTF-8, well-formed, no duplicate key anywhere
  (Python's ``json`` keeps the last one silently), no NaN/Infinity, at most
  ``MAX_DEPTH`` levels, and no control or bidirectional-control character in any key or
  string (validators.text_problem). It answers nothing itself: the verdict is kept in the
  request scope, and a body that did not parse is handed on with a content type FastAPI
  does not parse, so FastAPI's own "JSON decode error" (raised before any dependency, the
  old 422-before-401) cannot happen, and a route that somehow lacks ``strict_input`` gets
  bytes where it expects an object: still a 422, never a silently empty body.
* ``strict_input`` (a dependency of every operator route, listed after ``require_token``)
  raises the kept verdict, refuses path and query values holding a refused character
  (PostgreSQL refuses a NUL in any text: it was a 500) and query parameters the route does
  not declare, and validates the body in pydantic's strict JSON mode with unknown fields
  forbidden, nested models included: ``"623"`` and ``true`` are not integers, ``0``/``1`` not booleans (JSON
  strings still make datetimes and enums, as strict JSON mode allows). FastAPI then
  validates the body again, in its usual mode, for the endpoint; that second pass cannot
  fail where the strict one passed.

Every refusal is a 422 in the usual envelope (app._validation_handler) naming the field by
its path (``bmc.port``, ``nics[0].name``, a query parameter's name) and a refused character
by its code point; the offending value is never echoed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner.validators import text_problem

API_PREFIX = "/api/v1"
MAX_DEPTH = 32  # nesting levels of a request body (an inventory document needs fewer than 10)
_SCOPE_KEY = "prov.strict_body"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A body that failed the guard is handed on under this type: FastAPI leaves it unparsed.
REFUSED_TYPE = b"application/x-prov-refused"
_NAME_SHOWN = 64  # characters of an unknown query parameter's name quoted back

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc  # the field's path inside the body ((): the body itself)
    message: str


@dataclass(frozen=True)
class CheckedBody:
    raw: bytes
    value: Any = None
    problem: Problem | None = None


class _Refused(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- parsing
def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:20]} is out of range")
    return value


def check_json(raw: bytes) -> CheckedBody:
    """Parse a request body and find its first problem (None: a clean JSON value)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return CheckedBody(raw, problem=Problem((), f"not UTF-8 (byte {exc.start + 1})"))
    duplicates: dict[int, str] = {}  # id of an object -> its first repeated key
    keep: list[dict[str, Any]] = []  # those objects, alive (so their ids stay theirs) even if overwritten

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj and id(obj) not in duplicates:
                duplicates[id(obj)] = key
                keep.append(obj)
            obj[key] = value
        return obj

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=_no_constant, parse_float=_finite)
    except _Refused as exc:
        return CheckedBody(raw, problem=Problem((), exc.message))
    except json.JSONDecodeError as exc:
        return CheckedBody(raw, problem=Problem((), f"malformed JSON at line {exc.lineno} column {exc.colno}: "
                                                    f"{exc.msg}"))
    except RecursionError:
        return CheckedBody(raw, problem=Problem((), f"nested more than {MAX_DEPTH} levels deep"))
    except ValueError:  # an integer beyond Python's digit limit (sys.get_int_max_str_digits)
        return CheckedBody(raw, problem=Problem((), "a number has too many digits"))
    return CheckedBody(raw, value=value, problem=_first_problem(value, duplicates))


def _walk(value: Any) -> Iterator[tuple[Loc, Any]]:
    """Every container and string of a parsed body with its path, depth first (no recursion:
    the parser accepts nesting deeper than the interpreter's stack would)."""
    stack: list[tuple[Loc, Any]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        yield loc, item
        if isinstance(item, dict):
            stack.extend(((*loc, k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(item))))


def _first_problem(value: Any, duplicates: dict[int, str]) -> Problem | None:
    for loc, item in _walk(value):
        if len(loc) > MAX_DEPTH:
            return Problem(loc[:MAX_DEPTH], f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, str):
            if problem := text_problem(item, multiline=True):
                return Problem(loc, problem)
        elif isinstance(item, dict):
            for key in item:
                if problem := text_problem(key):
                    return Problem(loc, f"a key {problem}")
            if id(item) in duplicates:
                return Problem((*loc, duplicates[id(item)]), "duplicate key (each key may appear once)")
    return None


# --------------------------------------------------------------------------- the middleware
def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return False


class JsonBodyGuard:
    """Checks the JSON body of every /api/v1 write request once (``check_json``) and keeps the
    verdict for ``strict_input``. Must sit inside ``BodyLimitMiddleware``; ``max_bytes`` is
    enforced here too, so the guard never buffers more than the limit whatever the order."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (not path.startswith(API_PREFIX + "/") or scope.get("method") not in _BODY_METHODS
                or not _is_json(scope.get("headers", []))):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await JSONResponse(status_code=413, content={
                    "error": "body_too_large", "message": f"request body exceeds {self.max_bytes} bytes",
                    "field": "body", "limit": self.max_bytes})(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        # The scope is changed in place, not copied: the outer middleware reads what routing
        # writes into it (the metrics' route template, the audit's route).
        if raw.strip():
            checked = check_json(raw)
            scope[_SCOPE_KEY] = checked
            if checked.problem is not None:
                scope["headers"] = [(n, REFUSED_TYPE if n == b"content-type" else v) for n, v in scope["headers"]]
        replay: list[Message] = [{"type": "http.request", "body": raw, "more_body": False}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


# --------------------------------------------------------------------------- the dependency
def _refuse(kind: str, loc: Loc, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": (kind, *loc), "msg": message}])


_declared: dict[int, tuple[Any, frozenset[str]]] = {}
_adapters: dict[int, tuple[Any, TypeAdapter[Any]]] = {}


def _query_names(dependant: Any) -> Iterator[str]:
    stack = [dependant]
    while stack:
        d = stack.pop()
        yield from (p.alias for p in d.query_params)
        stack.extend(d.dependencies)


def declared_query(route: Any) -> frozenset[str]:
    """The query parameters a route (its endpoint and every dependency) declares."""
    hit = _declared.get(id(route))
    if hit is None or hit[0] is not route:
        hit = (route, frozenset(_query_names(route.dependant)))
        _declared[id(route)] = hit
    return hit[1]


def _adapter(route: Any) -> TypeAdapter[Any]:
    hit = _adapters.get(id(route))
    if hit is None or hit[0] is not route:
        hit = (route, TypeAdapter(route.body_field.field_info.annotation))
        _adapters[id(route)] = hit
    return hit[1]


def _check_query(request: Request, route: Any) -> None:
    known = declared_query(route)
    for name in request.query_params:
        if name in known:
            continue
        takes = ", ".join(sorted(known)) or "none"
        if text_problem(name) or len(name) > _NAME_SHOWN:
            raise _refuse("query", (), f"unknown query parameter (this route takes: {takes})")
        raise _refuse("query", (name,), f"unknown query parameter (this route takes: {takes})")
    # Values too: a NUL in ?host= reached PostgreSQL, which refuses it in any text (a 500).
    for name, value in request.query_params.multi_items():
        if problem := text_problem(value):
            raise _refuse("query", (name,), problem)


def _check_path(request: Request) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str) and (problem := text_problem(value)):
            raise _refuse("path", (name,), problem)


def _check_body(route: Any, body: CheckedBody) -> None:
    if body.problem is not None:
        raise _refuse("body", body.problem.loc, body.problem.message)
    if getattr(route, "body_field", None) is None:
        if isinstance(body.value, dict) and body.value:
            raise _refuse("body", (next(iter(body.value)),), "unknown field (this route takes no request body)")
        if body.value not in ({}, None):
            raise _refuse("body", (), "this route takes no request body")
        return
    try:
        _adapter(route).validate_json(body.raw, strict=True, extra="forbid")
    except ValidationError as exc:
        # type, place and reason only: no input values (a password is a string too)
        errors = [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]}
                  for e in exc.errors(include_url=False, include_context=False, include_input=False)]
        raise RequestValidationError(errors) from None


async def strict_input(request: Request) -> None:
    """Operator routes (after ``require_token``): refused characters in path and query values,
    the guard's verdict on the body, the body in strict JSON mode, undeclared query parameters.
    Each refusal is a 422 naming the field (the path or query parameter's name)."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    _check_path(request)
    body = request.scope.get(_SCOPE_KEY)
    if isinstance(body, CheckedBody):
        _check_body(route, body)
    _check_query(request, route)
