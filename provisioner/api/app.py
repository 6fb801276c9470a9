"""The FastAPI application factory.

The routers are listed here, by name: ``OPERATOR_ROUTERS`` are mounted under
/api/v1 with the operator token required; ``PUBLIC_ROUTERS`` at the root without
it: health checks (for load balancers), metrics (at the root by Prometheus
convention; its router requires the token itself), and the boot and
install-time routes, which a host being installed reaches with no operator
token (they check the host's one-time install token themselves). A new route
module is one more line in one of the two lists.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InvalidRequestError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from provisioner import __version__
from provisioner.api import lifespan, openapi
from provisioner.api.audit_context import AuditMiddleware
from provisioner.api.deps import require_token
from provisioner.api.error_text import is_public, public_validation_error, reply_body, reply_text
from provisioner.api.middleware import BodyLimitMiddleware, GcTuningMiddleware, Metrics, MetricsMiddleware
from provisioner.api.request_id import RequestIdMiddleware, request_id_header
from provisioner.api.routes import (
    audit,
    boot_files,
    boot_scripts,
    cluster,
    configure,
    events,
    events_stream,
    gitops,
    guests,
    health,
    host_install,
    hosts,
    installer,
    inventory,
    metrics,
    power,
    profiles,
    racks,
    tasks,
    templates,
    tokens,
    virt,
)
from provisioner.api.strict import JsonBodyGuard, strict_input
from provisioner.api.ui.routes import router as ui_router  # the web console at /ui (not in the OpenAPI document)
from provisioner.errors import ProvError
from provisioner.secret_store import mask
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Each list is mounted in its order, and where two routes match one path the first mounted
# answers; keep it alphabetical (the order of the directory scan this list replaced). The two
# lists share no path prefix: /api/v1 for the operator routes, /boot, /install/v1, /healthz,
# /readyz and /metrics for the public ones.
PUBLIC_ROUTERS: tuple[APIRouter, ...] = (
    boot_files.router, boot_scripts.router, health.router, installer.router, metrics.router, ui_router,
)
OPERATOR_ROUTERS: tuple[APIRouter, ...] = (
    audit.router, cluster.router, configure.router, events.router, events_stream.router, gitops.router, guests.router,
    host_install.router, hosts.router, inventory.router, power.router, profiles.router, racks.router, tasks.router,
    templates.router, tokens.router, virt.router,
)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = []
    for e in exc.errors():
        field = _field_path(e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if is_public(request):  # nothing the client sent is echoed there (api/error_text.py)
            field, msg = public_validation_error(e, field, msg)
        errs.append({"field": field, "message": reply_text(request, msg)})  # never an oracle (error_text.py)
    first = errs[0] if errs else {"field": "body", "message": "invalid request"}
    return JSONResponse(
        status_code=422,
        content={
            "error": "invalid_input",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "errors": errs,
        },
    )


def _prov_error_handler(request: Request, exc: ProvError) -> JSONResponse:
    body = reply_body(request, exc.to_dict())
    if exc.http_status >= 500:
        log.warning("request failed: %s", body["message"])
    # RFC 6750 section 3: a 401 names the scheme the client should use.
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(status_code=exc.http_status, content=body, headers=headers)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type", 429: "rate_limited"}


def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in the same JSON shape as ours."""
    body = {"error": _HTTP_CODES.get(exc.status_code, "http_error"), "message": reply_text(request, str(exc.detail))}
    return JSONResponse(status_code=exc.status_code, content=body, headers=getattr(exc, "headers", None))


def _db_busy_handler(_request: Request, exc: OperationalError) -> JSONResponse:
    # SQLite "database is locked" after the busy timeout, or PostgreSQL gone away: retryable.
    log.warning("database error: %s", mask(str(exc.orig)))
    return JSONResponse(status_code=503, content={"error": "database_unavailable",
                                                  "message": "database busy or unreachable; retry"},
                        headers=_RETRY)


# A pool wait or a locked database clears within seconds: clients are told when to retry.
_RETRY = {"Retry-After": "2"}


def _pool_timeout_handler(_request: Request, exc: PoolTimeout) -> JSONResponse:
    # Every pooled connection stayed in use for db.POOL_TIMEOUT_S: overload, answered as such
    # (it was a 500 after 30 s, issue 18). No connection is held across network I/O.
    log.warning("database connection pool exhausted: %s", exc)
    return JSONResponse(status_code=503, content={"error": "database_busy",
                                                  "message": "all database connections are busy; retry"},
                        headers=_RETRY)


def _stale_data_handler(request: Request, exc: StaleDataError | InvalidRequestError) -> JSONResponse:
    # Another request updated or deleted the row between our read and our write, or between our
    # write and the re-read after it (PATCH and DELETE of one rack at once): the client's view is
    # stale, not the server broken. SQLAlchemy says the latter only in the text of a generic
    # InvalidRequestError; any other one is a bug (500).
    if not isinstance(exc, StaleDataError) and not str(exc).startswith("Could not refresh instance"):
        return _unexpected_handler(request, exc)
    log.info("concurrent change: %s", mask(str(exc)))
    return JSONResponse(status_code=409, content={"error": "conflict",
                                                  "message": "changed concurrently by another request; retry"})


def _unexpected_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", mask(f"{exc.__class__.__name__}: {exc}"))
    # Answered by Starlette's outermost middleware, past RequestIdMiddleware: the id is added here.
    return JSONResponse(status_code=500, content={"error": "internal", "message": "internal error (see the log)"},
                        headers=request_id_header())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="prov",
        version=__version__,
        description="Bare-metal and VM provisioning: power, network boot, KVM guests, configuration.",
        **openapi.APP_OPTIONS,  # readable operation ids; /docs and /redoc served locally (api/openapi.py)
    )
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ProvError, _prov_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _db_busy_handler)  # type: ignore[arg-type]
    app.add_exception_handler(PoolTimeout, _pool_timeout_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StaleDataError, _stale_data_handler)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidRequestError, _stale_data_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_handler)
    app.state.metrics = Metrics()
    # The last added is the outermost: metrics see every response (413s too); the body limit
    # runs before any route reads the body.
    # Innermost: the audit context it sets reaches the dependencies, the route and its threads.
    app.add_middleware(AuditMiddleware, settings=settings)
    # Inside the body limit: checks /api/v1 JSON bodies once, for strict_input (api/strict.py).
    app.add_middleware(JsonBodyGuard, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(GcTuningMiddleware)  # after start-up: gc.freeze() and fewer young collections
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer and log line names its request

    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    for router in OPERATOR_ROUTERS:
        # The token first (401/403 before anything about the input), then strict input (422).
        app.include_router(router, prefix="/api/v1", dependencies=[Depends(require_token), Depends(strict_input)])
    lifespan.install(app, settings)
    openapi.install(app)
    return app
