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
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from provisioner import __version__
from provisioner.api import lifespan
from provisioner.api.deps import require_token
from provisioner.api.middleware import BodyLimitMiddleware, GcTuningMiddleware, Metrics, MetricsMiddleware
from provisioner.api.routes import (
    boot_files,
    boot_scripts,
    configure,
    events,
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
    virt,
)
from provisioner.errors import ProvError
from provisioner.secret_store import mask
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Each list is mounted in its order, and where two routes match one path the first mounted
# answers; keep it alphabetical (the order of the directory scan this list replaced). The two
# lists share no path prefix: /api/v1 for the operator routes, /boot, /install/v1, /healthz,
# /readyz and /metrics for the public ones.
PUBLIC_ROUTERS: tuple[APIRouter, ...] = (
    boot_files.router, boot_scripts.router, health.router, installer.router, metrics.router,
)
OPERATOR_ROUTERS: tuple[APIRouter, ...] = (
    configure.router, events.router, gitops.router, guests.router, host_install.router, hosts.router,
    inventory.router, power.router, profiles.router, racks.router, tasks.router, templates.router, virt.router,
)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _validation_handler(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = []
    for e in exc.errors():
        field = _field_path(e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        errs.append({"field": field, "message": mask(msg)})
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


def _prov_error_handler(_request: Request, exc: ProvError) -> JSONResponse:
    body = exc.to_dict()
    body["message"] = mask(body["message"])
    if exc.http_status >= 500:
        log.warning("request failed: %s", body["message"])
    return JSONResponse(status_code=exc.http_status, content=body)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type"}


def _http_error_handler(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in the same JSON shape as ours."""
    body = {"error": _HTTP_CODES.get(exc.status_code, "http_error"), "message": mask(str(exc.detail))}
    return JSONResponse(status_code=exc.status_code, content=body, headers=getattr(exc, "headers", None))


def _db_busy_handler(_request: Request, exc: OperationalError) -> JSONResponse:
    # SQLite "database is locked" after the busy timeout, or PostgreSQL gone away: retryable.
    log.warning("database error: %s", mask(str(exc.orig)))
    return JSONResponse(status_code=503, content={"error": "database_unavailable",
                                                  "message": "database busy or unreachable; retry"})


def _unexpected_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", mask(f"{exc.__class__.__name__}: {exc}"))
    return JSONResponse(status_code=500, content={"error": "internal", "message": "internal error (see the log)"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="prov",
        version=__version__,
        description="Bare-metal and VM provisioning: power, network boot, KVM guests, configuration.",
    )
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ProvError, _prov_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _db_busy_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_handler)
    app.state.metrics = Metrics()
    # The last added is the outermost: metrics see every response (413s too); the body limit
    # runs before any route reads the body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(GcTuningMiddleware)  # after start-up: gc.freeze() and fewer young collections

    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    for router in OPERATOR_ROUTERS:
        app.include_router(router, prefix="/api/v1", dependencies=[Depends(require_token)])
    lifespan.install(app, settings)
    return app
