"""The OpenAPI document, shaped for client generators, and the docs pages from local assets.

What FastAPI produces by itself is not what a generator (openapi-python-client,
openapi-generator) or a browser on an air-gapped provisioning network can use,
so ``create_app`` passes ``APP_OPTIONS`` and calls ``install``, which

* names every operation after its function (``list_hosts``, ``create_rack``): the
  names generated clients expose. A function mounted for several methods (GET and
  HEAD of /boot/files/...) keeps the name for GET, the others get ``_<method>``;
  two functions of one name get their tag in front. Every id is unique.
* declares the ``bearer`` HTTP scheme and puts it on every operation whose route
  depends on ``require_token`` (everything under /api/v1, and /metrics), so
  /docs has an Authorize button and clients send the token. The boot, install and
  health routes carry no operator token: install-time routes take the host's
  one-time token in the path, and say so.
* documents the error envelope every handler in api/app.py really answers with
  (``Error``: ``{"error": code, "message": text, "field"?, "errors"?, ...details}``)
  on every 4xx/5xx of every operation, instead of FastAPI's ``HTTPValidationError``
  (a 422 body prov never sends).
* documents the X-Request-ID header every operation takes and answers (api/request_id.py).
* serves Swagger UI at /docs and ReDoc at /redoc from provisioner/api/static
  (vendored from npm, see static/README.md): the pages name no outside URL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles

from provisioner.api import request_id
from provisioner.api.deps import require_token

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/static"
SCHEME = "bearer"
ERROR_REF = "#/components/schemas/Error"


def operation_id(route: APIRoute) -> str:
    """The route's function name (FastAPI's default appends the path and method)."""
    return route.name


# Display order in /docs and /redoc; a tag missing here is still shown, after these.
TAGS: list[dict[str, str]] = [
    {"name": "hosts", "description": "Enrolled machines: NICs, BMC, rack, profile, lifecycle state."},
    {"name": "racks", "description": "Groups of hosts, the unit of rack-wide power and provisioning."},
    {"name": "profiles", "description": "What gets installed: OS, install method, templates, roles."},
    {"name": "power", "description": "Power state, boot device and BMC verification, per host or rack."},
    {"name": "provision", "description": "OS installation: one host, a retry, or a whole rack (tasks)."},
    {"name": "configure", "description": "Ansible configuration runs (tasks)."},
    {"name": "guests", "description": "KVM guests on a host (or `local`, the controller's libvirt)."},
    {"name": "virt", "description": "A host's virtualisation pre-flight report."},
    {"name": "templates", "description": "Install and boot templates, and what they render for a host."},
    {"name": "tasks", "description": "Background work (rack-wide power, installs, guests): progress and result."},
    {"name": "events", "description": "The history of hosts and tasks."},
    {"name": "gitops", "description": "The applied inventory baseline and drift."},
    {"name": "inventory", "description": "The Ansible inventory, from the database."},
    {"name": "tokens", "description": "API tokens and their scopes."},
    {"name": "audit", "description": "Who changed what."},
    {"name": "metrics", "description": "Prometheus metrics (token required)."},
    {"name": "health", "description": "Liveness and readiness, without a token."},
    {"name": "boot", "description": "Network boot: iPXE scripts and boot files, without a token (firmware has none)."},
    {"name": "install", "description": "Install-time callbacks of a host being installed: the host's one-time "
                                       "install token in the path, no operator token."},
]

# Passed to FastAPI(...) by create_app: the stock /docs and /redoc load their assets from a CDN.
APP_OPTIONS: dict[str, Any] = {
    "docs_url": None, "redoc_url": None, "swagger_ui_oauth2_redirect_url": None,
    "generate_unique_id_function": operation_id, "openapi_tags": TAGS,
}

FIELD_ERROR: dict[str, Any] = {
    "title": "FieldError", "type": "object", "required": ["field", "message"],
    "properties": {
        "field": {"type": "string", "description": "dotted path of the input: `name`, `nics[0].mac`, `limit`"},
        "message": {"type": "string"},
    },
}
ERROR: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "Every error prov answers, whatever the status. `error` is a stable machine code "
                   "(provisioner/errors.py): e.g. `invalid_input`, `not_found`, `conflict`, "
                   "`invalid_transition`, `precondition_failed`, `unauthorized`, `forbidden`, `rate_limited`, "
                   "`body_too_large`, "
                   "`bmc_auth`, `bmc_unreachable`, `bmc_timeout`, `virt_error`, `database_busy`, `internal`. "
                   "Other keys carry the error's details (`kind`, `name`, `host`, `state`...).",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine code", "examples": ["not_found"]},
        "message": {"type": "string", "description": "one readable line"},
        "field": {"type": "string", "description": "the first offending input (`invalid_input`)"},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"},
                   "description": "every offending input (request validation, 422)"},
    },
    "additionalProperties": True,
}

_DESCRIPTIONS: dict[int, str] = {
    400: "malformed request",
    401: "missing, invalid or expired API token",
    403: "the token's scopes do not allow this operation, or the install token is not valid for it",
    404: "no such object",
    409: "conflicts with the object's current state, or it changed concurrently (retry)",
    412: "If-Match names another version of the object",
    413: "request body over the controller's limit",
    422: "invalid input: `field` names the first offending input, `errors` lists them all",
    429: "too many requests from this address; retry after Retry-After seconds",
    500: "internal error (see the controller's log)",
    501: "the BMC does not support this operation",
    502: "a peer (BMC, libvirt, SSH) failed",
    503: "database busy or unreachable; retry after Retry-After seconds",
    504: "the BMC did not answer in time",
}
_OPERATOR_ERRORS = (401, 403, 404, 409, 422, 500, 503)
_PUBLIC_ERRORS = (500, 503)
# Operations that wait on a peer answer its failures (errors.py DriverError and subclasses).
_PEER_ERRORS: dict[str, tuple[int, ...]] = {"power": (501, 502, 504), "guests": (502,), "virt": (502,)}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}
_INSTALL_AUTH = ("Authentication: the host's one-time install token in the path (`{token}`), minted when its "
                 "install starts and revoked when it ends; no operator token.")


def _uses(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def _api_routes(routes: Sequence[BaseRoute]) -> Iterable[Any]:
    """Every APIRoute as mounted (prefix and router dependencies applied). FastAPI >= 0.16x keeps
    included routers as routes of their own, walked by ``iter_route_contexts``; before, the app's
    routes were the routes."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return [r for r in routes if isinstance(r, APIRoute)]
    return [c for c in iter_route_contexts(routes) if isinstance(c.original_route, APIRoute)]


def _token_operations(routes: Sequence[BaseRoute]) -> set[tuple[str, str]]:
    """(path, method) of every operation whose route requires the operator token."""
    return {(r.path_format, m.lower()) for r in _api_routes(routes)
            if r.path_format.startswith("/api/") or _uses(r.dependant, require_token) for m in r.methods}


def _operations(schema: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                yield path, method, op


def _unique_ids(schema: dict[str, Any]) -> None:
    """Make every operationId unique, deterministically (FastAPI walks a route's methods as a set)."""
    ops = list(_operations(schema))
    counts = Counter(op.get("operationId") for _, _, op in ops)
    paths: dict[Any, set[str]] = {}
    for path, _, op in ops:  # before any renaming
        paths.setdefault(op.get("operationId"), set()).add(path)
    for _path, method, op in ops:
        oid = op.get("operationId")
        if counts[oid] < 2:
            continue
        new = oid if len(paths[oid]) == 1 else f"{(op.get('tags') or ['api'])[0]}_{oid}"
        op["operationId"] = new if method == "get" else f"{new}_{method}"
    counts = Counter(op["operationId"] for _, _, op in ops)
    for path, method, op in ops:  # last resort: the path itself, unique with the method
        if counts[op["operationId"]] > 1:
            slug = "".join(ch if ch.isalnum() else "_" for ch in path).strip("_")
            op["operationId"] = f"{op['operationId']}_{method}_{slug}"


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.rsplit("/", 1)[-1] in _FASTAPI_VALIDATION


def _is_envelope(response: dict[str, Any]) -> bool:
    return bool(response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref") == ERROR_REF)


def _document_errors(op: dict[str, Any], operator: bool) -> None:
    responses: dict[str, Any] = op["responses"]
    tags = op.get("tags") or []
    codes = set(_OPERATOR_ERRORS if operator else (500,) if "health" in tags else _PUBLIC_ERRORS)
    params = op.get("parameters", [])
    if "requestBody" in op:
        codes |= {413, 422}
    if params:
        codes.add(422)
    if any(p.get("in") == "path" for p in params):
        codes.add(404)
    for tag in tags:
        codes.update(_PEER_ERRORS.get(tag, ()))
    for number in codes:
        responses.setdefault(str(number), {"description": _DESCRIPTIONS[number]})
    for code, response in responses.items():
        if code[:1] == "2":
            for media, body in response.get("content", {}).items():
                if media.startswith("text/") and not body.get("schema"):  # PlainTextResponse, /metrics
                    body["schema"] = {"type": "string"}
        if code[:1] not in ("4", "5"):
            continue
        if _is_fastapi_validation(response):
            response["description"] = _DESCRIPTIONS[422]
            response.pop("content")
        if "content" not in response:
            response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
        if code in ("429", "503") and _is_envelope(response):  # /readyz's 503 is its own
            response.setdefault("headers", {}).update(_RETRY_AFTER)
    op["responses"] = dict(sorted(responses.items()))


def _referenced(schema: dict[str, Any], name: str) -> bool:
    target = f"#/components/schemas/{name}"

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("$ref") == target or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(schema.get("paths", {})) or any(
        walk(s) for n, s in schema.get("components", {}).get("schemas", {}).items() if n != name)


def polish(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """FastAPI's document -> the one we publish (in place; returned for convenience)."""
    _unique_ids(schema)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "An API token (`prov token create` on the controller, or POST /api/v1/tokens): "
                       "`Authorization: Bearer <token>`.",
    }
    schemas = components.setdefault("schemas", {})
    schemas["Error"], schemas["FieldError"] = ERROR, FIELD_ERROR
    token_ops = _token_operations(routes)
    for path, method, op in _operations(schema):
        operator = (path, method) in token_ops
        if operator:
            op["security"] = [{SCHEME: []}]
        elif path.startswith("/install/"):
            op["description"] = f"{op['description']}\n\n{_INSTALL_AUTH}" if op.get("description") \
                else _INSTALL_AUTH
        _document_errors(op, operator)
        request_id.document(op)  # after the errors: the header parameter implies no 422
    for name in _FASTAPI_VALIDATION:
        if not _referenced(schema, name):
            schemas.pop(name, None)
    return schema


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def install(app: FastAPI) -> None:
    """Publish the polished document at /openapi.json, and /docs, /redoc and their assets."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = polish(generate(), app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/swagger-ui/favicon-32x32.png",
            # the online validator's badge would be fetched from swagger.io
            swagger_ui_parameters={"validatorUrl": None, "displayRequestDuration": True},
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
                              redoc_js_url=f"{root}{STATIC_URL}/redoc/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{STATIC_URL}/swagger-ui/favicon-32x32.png",
                              with_google_fonts=False)

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
