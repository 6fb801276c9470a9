"""Operator routes for templates: list, show, upload (checked), and a host's rendered preview.

A template's text is answered with its ETag; an upload honours If-Match (api/etags.py), checked
and written under the template's lock (``_locked``), and answers the new ETag.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from provisioner import crud, isolated, templates_catalog
from provisioner.api import etags
from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.api.etags import IfMatch, IfNoneMatch
from provisioner.conductor import preview as preview_mod
from provisioner.errors import InvalidInput, NotFound, PreconditionFailed
from provisioner.settings import Settings

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


def _source(settings: Settings, kind: str, name: str) -> bytes | None:
    """The template's text as GET answers it (the user's copy over the shipped one); None: no such template."""
    for t in templates_catalog.list_templates(settings, kind):
        if t.name == name:
            with open(t.path, encoding="utf-8") as fh:
                return fh.read().encode()
    return None


@router.get("/templates/{kind}/{name}", response_class=PlainTextResponse, responses=etags.read_responses())
def show_template(kind: str, name: str, settings: SettingsDep, if_none_match: IfNoneMatch = None) -> Response:
    templates_catalog.check_kind_name(kind, name)
    source = _source(settings, kind, name)
    if source is None:
        raise NotFound(kind="template", name=f"{kind}/{name}")
    return etags.tagged(source, if_none_match, media_type="text/plain")


@contextlib.contextmanager
def _locked(settings: Settings, kind: str, name: str) -> Iterator[None]:
    """One upload of a template at a time, across threads and controller processes sharing the data
    directory: the If-Match comparison and the write are one step. An flock on a hidden file next
    to the template (the catalog reads ``*.j2`` only); held through the upload's check, so a second
    upload of the same template waits for the first (another template's does not)."""
    folder = settings.user_templates_dir / kind
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _upload(kind: str, name: str, body: bytes, settings: Settings, if_match: str | None,
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """Upload under the template's lock; the answer's headers: the ETag of the stored text, when it
    is the body as sent (RFC 9110 section 9.3.4: none if storing changed it, e.g. CRLF line ends)."""
    with _locked(settings, kind, name):
        if if_match is not None:
            current = _source(settings, kind, name)
            if current is None or not etags.if_match_holds(if_match, etags.tag_of(current)):
                raise PreconditionFailed(kind="template", name=f"{kind}/{name}")
        info = templates_catalog.upload(kind, name, body, settings)
        stored = _source(settings, kind, name)
    return info.to_dict(), {"ETag": etags.tag_of(stored)} if stored == body else {}


# The body is read raw whatever its type; octet-stream is listed too for client generators
# that cannot send text/plain (openapi-python-client).
_SOURCE = {"type": "string", "description": "Jinja2 template source (UTF-8)"}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "text/plain": {"schema": _SOURCE}, "application/octet-stream": {"schema": {**_SOURCE, "format": "binary"}}}}}


@router.put("/templates/{kind}/{name}", response_model=TemplateOut, openapi_extra=_UPLOAD_BODY,
            responses=etags.write_responses())
async def upload_template(kind: str, name: str, request: Request, settings: SettingsDep,
                          if_match: IfMatch = None) -> Response:
    """Body: the template source as text. Rejected (422, naming the problem) unless it renders cleanly.

    The check (a bounded render in a child process, up to ``template_check_timeout``) runs
    off the event loop: a hostile template never stops the other routes. The answer's ETag is
    the stored text's (what GET answers); If-Match must name the current one (412 otherwise,
    and for a template that does not exist yet).
    """
    templates_catalog.check_kind_name(kind, name)
    body = await request.body()
    upload = functools.partial(_upload, kind, name, body, settings, if_match)
    info, headers = await anyio.to_thread.run_sync(upload, limiter=_upload_limiter())
    return Response(etags.json_bytes(info), media_type="application/json", headers=headers)


@router.get("/hosts/{host}/rendered/{kind}", response_class=PlainTextResponse)
def rendered(host: str, kind: str, session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    """What ``host`` would get for ``kind`` now; the token is a placeholder (nothing is minted)."""
    row = crud.get_host(session, host)
    return PlainTextResponse(templates_catalog.render_for_host(session, row, kind, settings))


class RenderWarningOut(BaseModel):
    """One reason to look twice at a preview (render_warnings.py)."""

    code: str = Field(description="kind_not_used | os_family_mismatch | public_url_unset | no_ssh_key | local_boot")
    message: str


class RenderedPreview(BaseModel):
    host: str
    kind: str
    template: str = Field(description="the template rendered, <kind>/<name>.j2")
    text: str = Field(description="what the host would get now; the install token is a placeholder")
    warnings: list[RenderWarningOut]


@router.get("/hosts/{host}/preview/{kind}", response_model=RenderedPreview)
def preview(host: str, kind: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """The rendered text of ``/hosts/{host}/rendered/{kind}`` with the warnings ``prov template render``
    prints: a file the host's profile never uses, another OS family's installer, a controller URL
    no machine reaches (PROV_PUBLIC_URL unset), no SSH key, a local-boot config."""
    return preview_mod.preview(session, host, kind, settings).to_dict()
