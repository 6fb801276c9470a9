"""Operator routes for templates: list, show, upload (checked), and a host's rendered preview."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from provisioner import crud, isolated, templates_catalog
from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.errors import InvalidInput, NotFound

router = APIRouter(tags=["templates"])

# Uploads being checked at once (each check is a child process, see isolated.py); more wait
# here, on the event loop, without holding one of the threads every sync route shares.
_UPLOADS: RunVar[CapacityLimiter] = RunVar("prov_template_uploads")


def _upload_limiter() -> CapacityLimiter:
    try:
        return _UPLOADS.get()
    except LookupError:
        limiter = CapacityLimiter(isolated.MAX_CHILDREN)
        _UPLOADS.set(limiter)
        return limiter


class TemplateOut(BaseModel):
    """One template (templates_catalog.TemplateInfo)."""

    kind: str
    name: str
    source: str = Field(description="builtin | user")
    path: str
    overrides_builtin: bool
    ok: bool | None = Field(description="an upload's check passed (null when not checked)")
    error: str | None


class TemplateList(BaseModel):
    data: list[TemplateOut]
    count: int


@router.get("/templates", response_model=TemplateList)
def list_templates(settings: SettingsDep, kind: str | None = None) -> dict[str, Any]:
    if kind is not None and kind not in templates_catalog.KINDS:
        raise InvalidInput(field="kind", reason=f"unknown template kind {kind!r}")
    data = [t.to_dict() for t in templates_catalog.list_templates(settings, kind)]
    return {"data": data, "count": len(data)}


@router.get("/templates/{kind}/{name}", response_class=PlainTextResponse)
def show_template(kind: str, name: str, settings: SettingsDep) -> PlainTextResponse:
    templates_catalog.check_kind_name(kind, name)
    for t in templates_catalog.list_templates(settings, kind):
        if t.name == name:
            with open(t.path, encoding="utf-8") as fh:
                return PlainTextResponse(fh.read())
    raise NotFound(kind="template", name=f"{kind}/{name}")


# The body is read raw whatever its type; octet-stream is listed too for client generators
# that cannot send text/plain (openapi-python-client).
_SOURCE = {"type": "string", "description": "Jinja2 template source (UTF-8)"}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "text/plain": {"schema": _SOURCE}, "application/octet-stream": {"schema": {**_SOURCE, "format": "binary"}}}}}


@router.put("/templates/{kind}/{name}", response_model=TemplateOut, openapi_extra=_UPLOAD_BODY)
async def upload_template(kind: str, name: str, request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Body: the template source as text. Rejected (422, naming the problem) unless it renders cleanly.

    The check (a bounded render in a child process, up to ``template_check_timeout``) runs
    off the event loop: a hostile template never stops the other routes.
    """
    templates_catalog.check_kind_name(kind, name)
    body = await request.body()
    check = functools.partial(templates_catalog.upload, kind, name, body, settings)
    info = await anyio.to_thread.run_sync(check, limiter=_upload_limiter())
    return info.to_dict()


@router.get("/hosts/{host}/rendered/{kind}", response_class=PlainTextResponse)
def rendered(host: str, kind: str, session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    """What ``host`` would get for ``kind`` now; the token is a placeholder (nothing is minted)."""
    row = crud.get_host(session, host)
    return PlainTextResponse(templates_catalog.render_for_host(session, row, kind, settings))
