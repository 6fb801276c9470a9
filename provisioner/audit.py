"""The audit log: every change made through the API, written in the transaction of the change.

How a row comes to be:

* The API marks each write request under /api/v1 (``api/audit_context.py``): a
  ``RequestAudit`` in a context variable, which ``api.deps.require_token`` fills with the
  actor once the token is known.
* Session hooks (installed when this module is imported): while a request with an actor
  is current, each flush notes what it changes in the audited tables, and just before the
  commit one ``AuditLog`` row per changed object joins the same transaction. No route or
  crud function has to remember to call anything, and a change that rolls back leaves no
  row. The threads a request runs its work in (``run_in_threadpool``, ``run_network_io``)
  carry the context; the task runner's threads do not, so the controller's own work
  (power sync, task progress) is never recorded as the operator's.
* A write request that succeeds without any row being written that way (a template file
  on disk, a rack power action fanned out to worker threads) still gets one row, from the
  request itself (``write_request_row``).

Nothing secret reaches a row: secret columns read ``(set)``/``(changed)``, keys that look
secret inside JSON values are hidden, and the text is masked like log lines.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session

from provisioner import secret_store
from provisioner.db import get_engine
from provisioner.models import ApiToken, AuditLog, Event, Host, InventoryApply, Nic, Profile, Rack, Task
from provisioner.settings import Settings

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/api/v1"
SUMMARY_MAX = 2000
_VALUE_MAX = 120
# Column names and JSON keys whose values never appear, whatever the table.
_SECRET = re.compile(r"password|passwd|secret|token|_enc$|hash|private|credential|api_?key", re.IGNORECASE)
_PROV_TOKEN = re.compile(r"prov_[A-Za-z0-9_\-]{16,}")


# --------------------------------------------------------------------------- the request
@dataclass
class RequestAudit:
    """One write request, as far as the audit log needs it (filled in as the request goes)."""

    method: str
    path: str
    actor: str = ""  # "token:<name>"; empty until the token is verified (nothing is recorded then)
    token_id: int | None = None
    context: str = ""
    route: str = ""  # "PATCH /api/v1/hosts/{host}"
    path_params: dict[str, str] = field(default_factory=dict)
    request: Any = None  # the Starlette request: its body, once read, for a request-only row
    rows: int = 0  # audit rows written for this request so far


_current: ContextVar[RequestAudit | None] = ContextVar("prov_audit_request", default=None)


def begin(req: RequestAudit) -> Token[RequestAudit | None]:
    return _current.set(req)


def end(token: Token[RequestAudit | None]) -> None:
    _current.reset(token)


def current() -> RequestAudit | None:
    return _current.get()


def _recording() -> RequestAudit | None:
    req = _current.get()
    return req if req is not None and req.actor else None


# --------------------------------------------------------------------------- what is recorded
@dataclass(frozen=True)
class _Kind:
    """How one audited table reads in the log."""

    object_type: str
    name: Callable[[Any], str]
    skip: frozenset[str] = frozenset()  # bookkeeping, never summarised
    rename: Callable[[str], str] | None = None  # column -> the name the API uses for it


_BOOKKEEPING = frozenset({"id", "created_at", "updated_at"})


def _host_field(key: str) -> str:
    if key.startswith("install_token"):
        return "install_token"  # hash, ciphertext and expiry read as one field
    if key == "bmc_password_enc":
        return "bmc.password"
    if key.startswith("bmc_"):
        return "bmc." + key[4:]
    return {"rack_id": "rack", "profile_id": "profile"}.get(key, key)


_KINDS: dict[type, _Kind] = {
    Host: _Kind("host", lambda o: o.name, _BOOKKEEPING | {
        "version", "state_entered_at", "state_deadline", "power_checked_at", "virt_report", "bmc_reachable",
        "bmc_error"}, _host_field),
    Rack: _Kind("rack", lambda o: o.name, _BOOKKEEPING),
    Profile: _Kind("profile", lambda o: o.name, _BOOKKEEPING),
    ApiToken: _Kind("token", lambda o: o.name, _BOOKKEEPING | {"token_hash", "last_used_at"}),
    InventoryApply: _Kind("inventory-apply", lambda o: o.commit or o.source or "",
                          _BOOKKEEPING | {"document", "fingerprints", "drift", "drift_checked_at",
                                          "inventory_digest"}),
    Task: _Kind("task", lambda o: str(o.id or ""), _BOOKKEEPING | {
        "owner", "heartbeat_at", "started_at", "finished_at", "progress", "step", "result"}),
}
# Strength of an action when several changes of one transaction name the same object.
_RANK = {"delete": 4, "create": 3, "update": 1}


@dataclass
class _Change:
    obj: Any
    kind: _Kind
    action: str = "update"
    object_id: int | None = None
    object_name: str = ""
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # shown name -> (old, new)
    notes: list[str] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)

    def propose(self, action: str) -> None:
        if _RANK.get(action, 2) > _RANK.get(self.action, 2) or self.action == "update":
            self.action = action


_PENDING = "prov_audit_pending"


def _pending(session: OrmSession) -> dict[int, _Change]:
    return session.info.setdefault(_PENDING, {})  # type: ignore[no-any-return]


def _change_for(session: OrmSession, obj: Any) -> _Change:
    changes = _pending(session)
    ch = changes.get(id(obj))
    if ch is None:
        kind = _KINDS[type(obj)]
        ch = changes[id(obj)] = _Change(obj=obj, kind=kind, object_id=obj.id, object_name=kind.name(obj))
    return ch


def _parent(session: OrmSession, model: type, ident: int | None) -> Any:
    if ident is None:
        return None
    with session.no_autoflush:
        return session.get(model, ident)


def _column_keys(obj: Any) -> list[str]:
    return [a.key for a in inspect(obj).mapper.column_attrs]


def _note_fields(ch: _Change, obj: Any, *, created: bool) -> None:
    state = inspect(obj)
    for key in _column_keys(obj):
        if key in ch.kind.skip:
            continue
        shown = ch.kind.rename(key) if ch.kind.rename else key
        if created:
            value = getattr(obj, key, None)
            if value is None or value is False or value in ("", [], {}):
                continue
            ch.fields[shown] = (None, "(set)" if _SECRET.search(key) else value)
            continue
        hist = state.attrs[key].history
        if not hist.has_changes():
            continue
        old = hist.deleted[0] if hist.deleted else None
        new = hist.added[0] if hist.added else None
        if _SECRET.search(key):
            old, new = None, "(changed)"
        if shown in ch.fields:  # a second flush in the same transaction: first old, last new
            old = ch.fields[shown][0]
        ch.fields[shown] = (old, new)


def _note_child(session: OrmSession, obj: Any, action: str) -> None:
    """Nics, events and tasks read as changes of their host (or rack)."""
    if isinstance(obj, Nic):
        host = _parent(session, Host, obj.host_id)
        if host is not None:
            sign = "-" if action == "delete" else ""
            _change_for(session, host).notes.append(f"nic {sign}{obj.mac}")
        return
    if isinstance(obj, Event):
        host = _parent(session, Host, obj.host_id)
        if host is None or action != "create":
            return
        ch = _change_for(session, host)
        if obj.event == "enroll":
            return  # the host's own create says it
        ch.propose(obj.event[:32])
        moved = f"{obj.from_state} -> {obj.to_state}" if obj.from_state and obj.to_state else ""
        ch.notes.append(": ".join(p for p in (moved, (obj.message or "")[:200]) if p) or obj.event)
        return
    if isinstance(obj, Task):
        parent = _parent(session, Host, obj.host_id) or _parent(session, Rack, obj.rack_id)
        if parent is None:
            ch = _change_for(session, obj)
            ch.propose(obj.kind[:32] if action == "create" else action)
            if action != "create":
                _note_fields(ch, obj, created=False)
            return
        ch = _change_for(session, parent)
        if action == "create":
            ch.propose(obj.kind[:32])
            ch.tasks.append(obj)
        else:
            sub = _Change(obj=obj, kind=_KINDS[Task])
            _note_fields(sub, obj, created=False)
            if sub.fields:
                ch.notes.append(f"task {obj.id}: " + _fields_text(sub.fields))


def _note(session: OrmSession, obj: Any, action: str) -> None:
    if isinstance(obj, Nic | Event | Task):
        _note_child(session, obj, action)
        return
    if type(obj) not in _KINDS:
        return  # AuditLog itself, and tables nobody changes through the API
    ch = _change_for(session, obj)
    if action == "update" and isinstance(obj, ApiToken):
        hist = inspect(obj).attrs["revoked"].history
        if hist.added and hist.added[0] is True:
            action = "revoke"
    ch.propose(action)
    if action != "delete":
        _note_fields(ch, obj, created=action == "create")


def _before_flush(session: OrmSession, _ctx: Any, _instances: Any) -> None:
    if _recording() is None:
        return
    for obj in list(session.new):
        _note(session, obj, "create")
    for obj in list(session.dirty):
        if session.is_modified(obj, include_collections=False):
            _note(session, obj, "update")
    for obj in list(session.deleted):
        _note(session, obj, "delete")


def _before_commit(session: OrmSession) -> None:
    req = _recording()
    if req is None:
        session.info.pop(_PENDING, None)
        return
    session.flush()  # note what is still unflushed, and give new rows their ids
    changes = session.info.pop(_PENDING, None)
    if not changes:
        return
    for ch in changes.values():
        session.add(_row(session, req, ch))
    req.rows += len(changes)


def _forget(session: OrmSession, *_args: Any) -> None:
    session.info.pop(_PENDING, None)


event.listen(OrmSession, "before_flush", _before_flush)
event.listen(OrmSession, "before_commit", _before_commit)
event.listen(OrmSession, "after_soft_rollback", _forget)


# --------------------------------------------------------------------------- summaries
def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "(hidden)" if _SECRET.search(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict | list):
        text = json.dumps(_redact(value), sort_keys=True, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return text if len(text) <= _VALUE_MAX else text[: _VALUE_MAX - 3] + "..."


def _fields_text(fields: dict[str, tuple[Any, Any]], *, created: bool = False) -> str:
    if created:
        return ", ".join(f"{k}={_fmt(new)}" for k, (_old, new) in fields.items())
    parts = []
    for k, (old, new) in fields.items():
        parts.append(f"{k}: {_fmt(new)}" if new == "(changed)" or old is None else f"{k}: {_fmt(old)} -> {_fmt(new)}")
    return "; ".join(parts)


def clean(text: str) -> str:
    """What may be stored in a row: masked like log lines, prov tokens hidden, bounded."""
    text = _PROV_TOKEN.sub(secret_store.MASK, secret_store.mask(text))
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 3] + "..."


def _names(session: OrmSession, fields: dict[str, tuple[Any, Any]]) -> None:
    """rack/profile ids as names (what the operator typed)."""
    for key, model in (("rack", Rack), ("profile", Profile)):
        if key in fields:
            old, new = fields[key]
            fields[key] = tuple(getattr(_parent(session, model, v), "name", v) if isinstance(v, int) else v
                                for v in (old, new))  # type: ignore[assignment]


def _row(session: OrmSession, req: RequestAudit, ch: _Change) -> AuditLog:
    if ch.object_id is None and ch.action != "delete":
        ch.object_id = getattr(ch.obj, "id", None)
        if isinstance(ch.obj, Task):
            ch.object_name = str(ch.object_id or "")
    _names(session, ch.fields)
    parts = []
    if ch.action != "delete" and ch.fields:
        parts.append(_fields_text(ch.fields, created=ch.action == "create"))
    parts += [f"task {t.id} queued" for t in ch.tasks]
    parts += ch.notes
    return AuditLog(actor=req.actor, token_id=req.token_id, context=req.context[:64], action=ch.action[:32],
                    object_type=ch.kind.object_type, object_id=ch.object_id, object_name=ch.object_name[:255],
                    summary=clean("; ".join(p for p in parts if p)), request=req.route[:255])


# --------------------------------------------------------------------------- requests without rows
_SINGULAR = {"hosts": "host", "racks": "rack", "profiles": "profile", "templates": "template", "tokens": "token",
             "tasks": "task", "guests": "guest", "events": "event"}
_VERB = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}


def request_object(method: str, route: str, params: dict[str, str]) -> tuple[str, str, str]:
    """(object type, object name, action) a write request names by its route alone.

    ``POST /api/v1/racks/{rack}/power`` -> ("rack", "r1", "power"); ``PUT
    /api/v1/templates/{kind}/{name}`` -> ("template", "kickstart/base", "update");
    ``POST /api/v1/hosts/{host}/guests/{name}/start`` -> ("guest", "web01/vm1", "start").
    """
    path = route.split(" ", 1)[-1].removeprefix(API_PREFIX)
    segments = [s for s in path.split("/") if s]
    object_type, names, action = "", [], _VERB.get(method, method.lower())
    for i, seg in enumerate(segments):
        if seg.startswith("{"):
            names.append(params.get(seg.strip("{}"), ""))
            continue
        names_one = i + 1 < len(segments) and segments[i + 1].startswith("{")
        if names_one or not object_type:
            object_type = _SINGULAR.get(seg, seg)
        elif i == len(segments) - 1:
            action = seg
    return object_type[:32], "/".join(n for n in names if n), action[:32]


def _body_summary(body: object) -> str:
    if not isinstance(body, bytes) or not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return f"{len(body)} bytes"
    if isinstance(data, dict):
        return ", ".join(f"{k}={_fmt(v if not _SECRET.search(str(k)) else '(set)')}"
                         for k, v in _redact(data).items())
    return _fmt(data)


def write_request_row(settings: Settings, req: RequestAudit) -> None:
    """The row of a write request that changed nothing the session hooks saw (own transaction)."""
    object_type, object_name, action = request_object(req.method, req.route, req.path_params)
    row = AuditLog(actor=req.actor, token_id=req.token_id, context=req.context[:64], action=action,
                   object_type=object_type or "request", object_name=object_name[:255],
                   summary=clean(_body_summary(getattr(req.request, "_body", None))), request=req.route[:255])
    with Session(get_engine(settings)) as session:
        session.add(row)
        session.commit()
    req.rows += 1
