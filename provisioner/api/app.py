"""The FastAPI application factory.

Routers are discovered: every module in provisioner/api/routes/ that defines
``router`` is mounted under /api/v1 with the operator token required, unless
the module sets ``PUBLIC = True`` (health checks, metrics, and the install-time
routes, which check the host's one-time token themselves).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

import provisioner.api.routes as routes_pkg
from provisioner import __version__
from provisioner.api.deps import require_token
from provisioner.api.middleware import BodyLimitMiddleware, GcTuningMiddleware, Metrics, MetricsMiddleware
from provisioner.errors import ProvError
from provisioner.secret_store import mask
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)


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

    for mod_info in sorted(pkgutil.iter_modules(routes_pkg.__path__), key=lambda m: m.name):
        try:
            module = importlib.import_module(f"{routes_pkg.__name__}.{mod_info.name}")
        except Exception:  # one broken route module must not take the whole API down
            log.exception("route module %s failed to import; its endpoints are not served", mod_info.name)
            continue
        router = getattr(module, "router", None)
        if router is None:
            continue
        if getattr(module, "PUBLIC", False):
            app.include_router(router)
        else:
            app.include_router(router, prefix="/api/v1", dependencies=[Depends(require_token)])

    startup = getattr(importlib.import_module("provisioner.api.lifespan"), "install", None) \
        if importlib.util.find_spec("provisioner.api.lifespan") else None
    if startup is not None:
        startup(app, settings)
    return app
