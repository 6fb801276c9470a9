"""The console's pages: login/logout, racks (elevations), hosts, one host, tasks, profiles, assets.

Reads go through crud (the REST routes' queries); nothing here writes but the session cookie.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import func
from sqlmodel import Session, col, select

from provisioner import crud, states
from provisioner.api.deps import SettingsDep
from provisioner.api.ui import session as ui_session
from provisioner.api.ui import view
from provisioner.api.ui.actions import ACTIONS
from provisioner.db import get_engine
from provisioner.errors import NotFound, ProvError
from provisioner.models import EventStreamRow, Host, Profile, Rack, Task

router = APIRouter(prefix="/ui", include_in_schema=False)

HISTORY_PAGE = 50
LIST_PAGE = 100
# The only asset served without a session: the login page's stylesheet.
PUBLIC_ASSETS = frozenset({"console.css"})
ASSET_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


def stream_head(session: Session) -> int:
    """The newest event id: a page rendered now follows the stream from here (nothing missed)."""
    return int(session.exec(select(func.max(EventStreamRow.id))).one() or 0)  # type: ignore[call-overload]


def running_progress(session: Session, host_ids: list[int]) -> dict[int, int]:
    """host id -> progress of its newest running or pending task."""
    if not host_ids:
        return {}
    rows = session.exec(select(Task).where(col(Task.host_id).in_(host_ids),
                                           col(Task.status).in_([states.TASK_RUNNING, states.TASK_PENDING]))
                        .order_by(col(Task.id))).all()
    return {t.host_id: t.progress for t in rows if t.host_id is not None}


# --------------------------------------------------------------------------- login
@router.get("", name="ui_root")
def root() -> Response:
    return view.redirect("/ui/racks")


@router.get("/login")
def login_page(request: Request, settings: SettingsDep) -> Response:
    if ui_session.current(request, settings) is not None:
        return view.redirect("/ui/racks")
    return _login_form(request)


def _login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
    nonce = ui_session.new_login_nonce()
    response = view.render(request, "login.html", status=status, title="Log in", login_csrf=nonce, error=error)
    ui_session.set_cookie(response, request, ui_session.LOGIN_COOKIE, nonce, max_age=ui_session.LOGIN_FORM_S)
    return response


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    data = await view.form(request)
    sent, kept = data.get("csrf", ""), request.cookies.get(ui_session.LOGIN_COOKIE, "")
    if not ui_session.same_origin(request) or not kept or sent != kept:
        return _login_form(request, "The login form expired or came from another site; try again.", status=403)
    token = data.get("token", "")
    row = await _run(ui_session.login, settings, token) if token.strip() else None
    if row is None or row.id is None:
        return _login_form(request, "That token is not valid (unknown, revoked or expired).", status=401)
    value, _ = ui_session.issue(settings, row.id)
    response = view.redirect("/ui/racks")
    ui_session.set_cookie(response, request, ui_session.COOKIE, value, max_age=ui_session.SESSION_S)
    ui_session.clear_cookie(response, request, ui_session.LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    sess = await _run(ui_session.current, request, settings)
    data = await view.form(request)
    if sess is not None:
        if not ui_session.same_origin(request) or not ui_session.csrf_ok(sess, data.get("csrf")):
            return view.headers(Response("CSRF token missing or wrong", status_code=403, media_type="text/plain"))
        ui_session.end(sess)
    response = view.redirect("/ui/login")
    ui_session.clear_cookie(response, request, ui_session.COOKIE)
    return response


async def _run(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


# --------------------------------------------------------------------------- assets
@router.get("/assets/{name}")
def asset(name: str, request: Request, settings: SettingsDep) -> Response:
    if name not in PUBLIC_ASSETS and ui_session.current(request, settings) is None:
        return view.headers(Response("log in first", status_code=401, media_type="text/plain"))
    path = view.ASSETS / name
    kind = ASSET_TYPES.get(path.suffix)
    if "/" in name or name.startswith(".") or kind is None or not path.is_file():
        return view.headers(Response("not found", status_code=404, media_type="text/plain"))
    response = FileResponse(path, media_type=kind)
    view.headers(response)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


# --------------------------------------------------------------------------- racks
def _rack_views(session: Session, racks: list[Rack]) -> list[dict[str, Any]]:
    ids = [r.id for r in racks if r.id is not None]
    hosts = list(session.exec(select(Host).where(col(Host.rack_id).in_(ids)).order_by(col(Host.name))).all()) \
        if ids else []
    progress = running_progress(session, [h.id for h in hosts if h.id is not None])
    out = []
    for rack in racks:
        mine = [h for h in hosts if h.rack_id == rack.id]
        by_u: dict[int, Host] = {}
        unplaced = []
        for h in mine:
            if h.u_position is not None and 1 <= h.u_position <= rack.size_u and h.u_position not in by_u:
                by_u[h.u_position] = h
            else:
                unplaced.append(h)
        # Top of the rack first, as an elevation is drawn (U1 at the bottom).
        slots = [{"u": u, "host": by_u.get(u), "progress": progress.get(by_u[u].id or 0) if u in by_u else None}
                 for u in range(rack.size_u, 0, -1)]
        out.append({"rack": rack, "slots": slots, "unplaced": unplaced, "count": len(mine)})
    return out


@router.get("/racks")
def racks_page(request: Request, settings: SettingsDep) -> Response:
    sess = view.require(request, settings)
    with Session(get_engine(settings)) as s:
        racks = list(s.exec(select(Rack).order_by(col(Rack.name))).all())
        unracked = list(s.exec(select(Host).where(col(Host.rack_id).is_(None)).order_by(col(Host.name))).all())
        return view.render(request, "racks.html", sess=sess, racks=_rack_views(s, racks), unracked=unracked,
                           title="Racks", stream_after=stream_head(s), stream_filter="")


@router.get("/racks/{name}")
def rack_page(name: str, request: Request, settings: SettingsDep) -> Response:
    sess = view.require(request, settings)
    with Session(get_engine(settings)) as s:
        try:
            rack = crud.get_rack(s, name)
        except NotFound:
            return _not_found(request, sess, f"No rack named {name}.")
        return view.render(request, "racks.html", sess=sess, racks=_rack_views(s, [rack]), unracked=[],
                           title=f"Rack {rack.name}", stream_after=stream_head(s), stream_filter=f"rack={rack.name}")


def _not_found(request: Request, sess: ui_session.UiSession, message: str) -> Response:
    return view.render(request, "message.html", status=404, sess=sess, title="Not found", message=message)


# --------------------------------------------------------------------------- hosts
@router.get("/hosts")
def hosts_page(request: Request, settings: SettingsDep) -> Response:
    sess = view.require(request, settings)
    q = request.query_params
    filters = {k: (q.get(k) or "").strip() or None for k in ("state", "rack", "role", "profile", "q")}
    try:
        offset = max(0, int(q.get("offset") or 0))
    except ValueError:
        offset = 0
    with Session(get_engine(settings)) as s:
        try:
            hosts, total = crud.list_hosts(s, state=filters["state"], rack=filters["rack"], role=filters["role"],
                                           profile=filters["profile"], name=filters["q"], limit=LIST_PAGE,
                                           offset=offset)
        except ProvError:
            hosts, total = [], 0
        racks = [r.name for r in s.exec(select(Rack).order_by(col(Rack.name))).all()]
        profiles = [p.name for p in s.exec(select(Profile).order_by(col(Profile.name))).all()]
        return view.render(request, "hosts.html", sess=sess, title="Hosts", hosts=hosts, total=total, offset=offset,
                           page=LIST_PAGE, filters=filters, racks=racks, profiles=profiles,
                           all_states=sorted(states.ALL), stream_after=stream_head(s), stream_filter="")


def history_page(s: Session, host_id: int, before: int | None) -> tuple[list[Any], int | None]:
    """Up to HISTORY_PAGE history lines before row offset ``before`` (None: the newest page),
    oldest first, and the offset of the page before them (None: this is the first)."""
    _, total = crud.list_events(s, host_id=host_id, limit=1)
    end = total if before is None else max(0, min(before, total))
    start = max(0, end - HISTORY_PAGE)
    rows, _ = crud.list_events(s, host_id=host_id, limit=end - start, offset=start) if end > start else ([], 0)
    return rows, (start if start > 0 else None)


@router.get("/hosts/{name}")
def host_page(name: str, request: Request, settings: SettingsDep) -> Response:
    sess = view.require(request, settings)
    with Session(get_engine(settings)) as s:
        try:
            host = crud.get_host(s, name)
        except NotFound:
            return _not_found(request, sess, f"No host named {name}.")
        assert host.id is not None
        after = stream_head(s)
        data = crud.host_public_dict(s, host)
        history, older = history_page(s, host.id, None)
        tasks, _ = crud.list_tasks(s, host_id=host.id, limit=20)
        profile = s.get(Profile, host.profile_id) if host.profile_id else None
        progress = running_progress(s, [host.id]).get(host.id)
        return view.render(request, "host.html", sess=sess, title=f"Host {host.name}", host=data,
                           history=history, older=older, host_name=host.name,
                           tasks=tasks, profile=profile, progress=progress,
                           stream_after=after, stream_filter=f"host={host.name}", actions=ACTIONS,
                           facts=host.virt_report or {})


@router.get("/hosts/{name}/history")
def host_history(name: str, request: Request, settings: SettingsDep) -> Response:
    """Older history lines (the host page's "Show older" asks for them): an HTML fragment."""
    sess = view.require(request, settings)
    try:
        before = int(request.query_params.get("before") or 0)
    except ValueError:
        before = 0
    with Session(get_engine(settings)) as s:
        try:
            host = crud.get_host(s, name)
        except NotFound:
            return _not_found(request, sess, f"No host named {name}.")
        assert host.id is not None
        rows, older = history_page(s, host.id, before)
        return view.fragment("_history.html", history=rows, older=older, host_name=host.name)


# --------------------------------------------------------------------------- tasks, profiles
@router.get("/tasks")
def tasks_page(request: Request, settings: SettingsDep) -> Response:
    sess = view.require(request, settings)
    q = request.query_params
    status = q.get("status") or None
    with Session(get_engine(settings)) as s:
        tasks, total = crud.list_tasks(s, status=status, limit=LIST_PAGE)
        names = dict(s.exec(select(Host.id, Host.name).where(  # type: ignore[call-overload]
            col(Host.id).in_([t.host_id for t in tasks if t.host_id]))).all())
        return view.render(request, "tasks.html", sess=sess, title="Tasks", tasks=tasks, total=total,
                           task_status=status, host_names=names, stream_after=stream_head(s), stream_filter="kind=task")


@router.get("/profiles")
def profiles_page(request: Request, settings: SettingsDep) -> Response:
    sess = view.require(request, settings)
    with Session(get_engine(settings)) as s:
        profiles, total = crud.list_profiles(s, limit=1000)
        return view.render(request, "profiles.html", sess=sess, title="Profiles", profiles=profiles, total=total)
