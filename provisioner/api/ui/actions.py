"""Host actions from the console: the REST route functions themselves, called with the session's actor.

Each action names the REST route it is (``ACTIONS``): the API's scope rule for that route decides
(api/scopes.py: a viewer sees but cannot act), the route function does the work (power through the
power service, install/retry/configure through the conductor's entry points, abort through the
transition route, which also cancels the host's tasks), and the audit log records it as that
route, with the context ``ui``. Every POST needs the session's CSRF token and a same-origin
Origin; a refused one changes nothing (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import audit
from provisioner.api.deps import SettingsDep
from provisioner.api.routes import configure as configure_routes
from provisioner.api.routes import host_install
from provisioner.api.routes import hosts as host_routes
from provisioner.api.routes import power as power_routes
from provisioner.api.ui import session as ui_session
from provisioner.api.ui import view
from provisioner.db import get_engine
from provisioner.errors import ProvError
from provisioner.schemas import TransitionRequest
from provisioner.secret_store import mask
from provisioner.settings import Settings
from provisioner.states import PowerAction

router = APIRouter(prefix="/ui", include_in_schema=False)


@dataclass(frozen=True)
class Action:
    label: str
    route: str  # the REST route (under /api/v1) it is, for the scope rule and the audit log
    destructive: bool  # the page asks for a confirmation first
    run: Callable[[str, Settings, str], Awaitable[str]]  # (host, settings, actor) -> what happened


async def _power(action: PowerAction, host: str, settings: Settings, actor: str) -> str:
    out = await power_routes.post_host_power(host, power_routes.PowerRequest(action=action, wait=True),
                                             settings, actor)
    return f"{out['host']}: {out['message'] or 'power ' + action.value} (power {out['power_state']})"


async def _sync(settings: Settings, fn: Callable[[Session], Any]) -> Any:
    def run() -> Any:
        with Session(get_engine(settings), expire_on_commit=False) as s:
            return fn(s)
    return await run_in_threadpool(run)


async def _install(host: str, settings: Settings, actor: str) -> str:
    task = await _sync(settings, lambda s: host_install.install_host(host, s, settings, actor, None))
    return f"install of {host} started (task {task.id})"


async def _retry(host: str, settings: Settings, actor: str) -> str:
    task = await _sync(settings, lambda s: host_install.retry_host(host, s, settings, actor))
    return f"install of {host} retried (task {task.id})"


async def _configure(host: str, settings: Settings, actor: str) -> str:
    body = configure_routes.ConfigureBody()  # the API's defaults: the site playbook, docker
    task = await _sync(settings, lambda s: configure_routes.configure_host(host, body, s, settings, actor))
    return f"configure of {host} started (task {task['id']})"


async def _abort(host: str, settings: Settings, actor: str) -> str:
    body = TransitionRequest.model_validate({"event": "abort", "message": f"abort by {actor}"})
    await _sync(settings, lambda s: host_routes.transition(host, body, s, actor, settings))
    return f"{host}: current phase aborted"


def _power_action(action: PowerAction) -> Callable[[str, Settings, str], Awaitable[str]]:
    async def run(host: str, settings: Settings, actor: str) -> str:
        return await _power(action, host, settings, actor)
    return run


ACTIONS: dict[str, Action] = {
    "power-on": Action("Power on", "/hosts/{host}/power", False, _power_action(PowerAction.ON)),
    "power-off": Action("Power off", "/hosts/{host}/power", True, _power_action(PowerAction.OFF)),
    "power-cycle": Action("Power cycle", "/hosts/{host}/power", True, _power_action(PowerAction.CYCLE)),
    "install": Action("Install", "/hosts/{host}/install", True, _install),
    "retry": Action("Retry install", "/hosts/{host}/retry", True, _retry),
    "configure": Action("Configure", "/hosts/{host}/configure", False, _configure),
    "abort": Action("Abort", "/hosts/{host}/transition", True, _abort),
}


def refused(message: str) -> Response:
    return view.headers(Response(message, status_code=403, media_type="text/plain"))


@router.post("/hosts/{name}/actions/{action}")
async def host_action(name: str, action: str, request: Request, settings: SettingsDep) -> Response:
    sess = await run_in_threadpool(ui_session.current, request, settings)
    if sess is None:
        return view.headers(Response("log in first", status_code=401, media_type="text/plain"))
    data = await view.form(request)
    if not ui_session.same_origin(request) or not ui_session.csrf_ok(sess, data.get("csrf")):
        return refused("CSRF token missing or wrong: nothing was changed")
    act = ACTIONS.get(action)
    if act is None:
        return view.headers(Response(f"no action {action!r}", status_code=404, media_type="text/plain"))
    if not sess.may("POST", act.route):
        return refused(f"token {sess.name!r} (scopes: {', '.join(sess.scopes) or 'none'}) may not {act.label.lower()}:"
                       " needs the operator scope")
    route = f"POST {audit.API_PREFIX}{act.route}"
    req = audit.RequestAudit(method="POST", path=f"{audit.API_PREFIX}{act.route.replace('{host}', name)}",
                             actor=f"token:{sess.name}", token_id=sess.token_id, context=ui_session.CONTEXT,
                             route=route, path_params={"host": name})
    token = audit.begin(req)
    try:
        try:
            message, ok = await act.run(name, settings, sess.actor), True
        except ProvError as exc:
            message, ok = f"{act.label} failed: {mask(exc.message)}", False
        if ok and not req.rows:
            await run_in_threadpool(audit.write_request_row, settings, req)
    finally:
        audit.end(token)
    back = data.get("back") or ""
    target = back if back.startswith("/ui/") and "//" not in back else f"/ui/hosts/{quote(name, safe='')}"
    return view.flash(view.redirect(target), request, ok, message)
