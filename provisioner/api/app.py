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

import provisioner.api.routes as routes_pkg
from provisioner import __version__
from provisioner.api.deps import require_token
from provisioner.errors import ProvError
from provisioner.secrets import mask
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

    for mod_info in sorted(pkgutil.iter_modules(routes_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{routes_pkg.__name__}.{mod_info.name}")
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
