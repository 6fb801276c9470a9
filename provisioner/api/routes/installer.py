"""Install-time routes, used by installers with the host's one-time token (no operator token).

``GET  /install/v1/{token}/config``       the kickstart / preseed / autoinstall user-data
``GET  /install/v1/{token}/user-data``    cloud-init NoCloud seed (``ds=nocloud-net;s=.../``)
``GET  /install/v1/{token}/meta-data``
``GET  /install/v1/{token}/vendor-data``
``POST /install/v1/{token}/events``       ``{"event": "start|progress|done|error", "message": ..., "progress": n}``
``GET  /install/v1/{token}/report``       the same as query parameters, for iPXE and busybox wget,
                                          which cannot POST JSON

Order of checks, so that nothing changes on a bad request: body size (413),
token (403, before the body is even parsed), body schema (422), host state (409).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provisioner import states as S
from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.api.ratelimit import RESPONSE, limit
from provisioner.conductor import image_deploy, install_callbacks, install_tokens, netboot
from provisioner.errors import Conflict, InvalidInput
from provisioner.models import Event, Host, Profile
from provisioner.secret_store import mask
from provisioner.templates_catalog import render_install_file

PUBLIC = True
_RESPONSES: dict[int | str, dict[str, str]] = {
    403: {"description": "install token invalid, expired or already used"},
    409: {"description": "the host is not installing"},
    **RESPONSE,
}
# Rate-limited per source address before the token is even looked at (api/ratelimit.py).
router = APIRouter(prefix="/install/v1", tags=["install"], responses=_RESPONSES,
                   dependencies=[Depends(limit("install"))])

# An installer's report is a line of text; 16 KiB is generous and keeps a
# misbehaving (or hostile) client from filling the history table.
MAX_EVENT_BYTES = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store"}
# Files are served while the workflow has the host in an install state.
_SERVE_STATES = frozenset({S.INSTALLING, S.INSTALL_WAIT})


class BodyTooLarge(InvalidInput):
    code = "body_too_large"
    http_status = 413
    template = "request body exceeds {limit} bytes"


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event: Literal["start", "progress", "done", "error"]
    message: str = Field(default="", max_length=4096)
    progress: int | None = Field(default=None, ge=0, le=100)


class EventResult(BaseModel):
    ok: bool = True
    host: str
    state: str


def _host_for_file(session: SessionDep, token: str) -> Host:
    host = install_tokens.verify(session, token)
    if host.state not in _SERVE_STATES:
        raise Conflict(reason=f"host {host.name} is {host.state}, not installing", current_state=host.state)
    return host


def _note_fetch(session: SessionDep, host: Host, what: str) -> None:
    session.add(Event(host_id=host.id, event="install-fetch", message=f"installer fetched its {what}",
                      actor="installer"))
    session.commit()


def _file(session: SessionDep, settings: SettingsDep, token: str, what: str, name: str | None = None,
          kind: str | None = None, request: Request | None = None) -> PlainTextResponse:
    if request is not None:
        settings = netboot.settings_for_request(settings, str(request.base_url))
    host = _host_for_file(session, token)
    text = render_install_file(session, host, token, settings, kind=kind, name=name)
    _note_fetch(session, host, what)
    return PlainTextResponse(text, headers=_NO_STORE)


@router.get("/{token}/config", response_class=PlainTextResponse)
def install_config(token: str, session: SessionDep, settings: SettingsDep, request: Request) -> PlainTextResponse:
    return _file(session, settings, token, "install config", request=request)


@router.get("/{token}/agent.sh", response_class=PlainTextResponse)
def agent_sh(token: str, session: SessionDep, settings: SettingsDep, request: Request) -> PlainTextResponse:
    """The image deploy agent the deploy ramdisk runs (kernel argument ``prov.run``)."""
    settings = netboot.settings_for_request(settings, str(request.base_url))
    host = _host_for_file(session, token)
    text = image_deploy.agent_script(session, host, token, settings)
    _note_fetch(session, host, "image deploy agent")
    return PlainTextResponse(text, headers=_NO_STORE)


@router.get("/{token}/user-data", response_class=PlainTextResponse)
def user_data(token: str, session: SessionDep, settings: SettingsDep, request: Request) -> PlainTextResponse:
    host = _host_for_file(session, token)
    profile = session.get(Profile, host.profile_id) if host.profile_id is not None else None
    if profile is None or profile.install_method != "autoinstall":
        raise Conflict(reason=f"host {host.name}'s profile does not install with autoinstall (no user-data)")
    return _file(session, settings, token, "cloud-init user-data", kind="autoinstall", request=request)


@router.get("/{token}/meta-data", response_class=PlainTextResponse)
def meta_data(token: str, session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    return _file(session, settings, token, "cloud-init meta-data", kind="autoinstall", name="meta-data")


@router.get("/{token}/vendor-data", response_class=PlainTextResponse)
def vendor_data(token: str, session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    return _file(session, settings, token, "cloud-init vendor-data", kind="autoinstall", name="vendor-data")


async def _read_limited(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
        raise BodyTooLarge(limit=MAX_EVENT_BYTES, field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise BodyTooLarge(limit=MAX_EVENT_BYTES, field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_event(raw: bytes) -> install_callbacks.InstallEvent:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(field="body", reason="not a JSON object") from exc
    try:
        body = EventBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc", ())
        # Only a field of ours is named: a key the client made up is never echoed (issue 18).
        field = str(loc[0]) if loc and loc[0] in EventBody.model_fields else "body"
        raise InvalidInput(field=field, reason=mask(str(err.get("msg", "invalid")))) from exc
    return install_callbacks.InstallEvent(event=body.event, message=body.message, progress=body.progress)


def _apply(session: SessionDep, settings: SettingsDep, host: Host,
           ev: install_callbacks.InstallEvent) -> EventResult:
    host = install_callbacks.handle(session, host, ev, settings)
    return EventResult(host=host.name, state=host.state)


# The body is read by hand (size limit, then token, then schema); document it for OpenAPI clients.
_EVENT_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": EventBody.model_json_schema()}}}}


@router.post("/{token}/events", response_model=EventResult, openapi_extra=_EVENT_BODY_DOC,
             responses={413: {"description": "body too large"}, 422: {"description": "malformed body"}})
async def post_event(token: str, request: Request, session: SessionDep, settings: SettingsDep) -> EventResult:
    raw = await _read_limited(request)
    host = install_tokens.verify(session, token)
    ev = _parse_event(raw)
    return _apply(session, settings, host, ev)


@router.get("/{token}/report", response_model=EventResult)
def report(
    token: str,
    session: SessionDep,
    settings: SettingsDep,
    event: Annotated[Literal["start", "progress", "done", "error"], Query()],
    reason: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")] = "",
    errno: Annotated[str, Query(max_length=10, pattern=r"^(0x)?[0-9a-fA-F]*$")] = "",
    progress: Annotated[int | None, Query(ge=0, le=100)] = None,
) -> EventResult:
    """GET form of ``events`` for iPXE (``imgfetch``) and d-i's busybox wget."""
    host = install_tokens.verify(session, token)
    message = reason or event
    if errno:
        message += f" (iPXE error {errno}, see https://ipxe.org/err/{errno.removeprefix('0x')})"
    return _apply(session, settings, host, install_callbacks.InstallEvent(event=event, message=message,
                                                                          progress=progress))
