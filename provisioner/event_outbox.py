"""Writes the event stream's rows (``event_stream``) in the transaction of the change they describe.

Session hooks, installed for every SQLAlchemy session of the process when models.py is imported,
so no writer (crud, lifecycle, the conductor's task code, whichever engine runs tasks) has to know
about the stream:

* ``after_flush`` looks at what the flush wrote: a new history row (``Event``) is ``host.state``
  when it moves the host, ``drift`` when the drift check wrote it, else ``host.history``; a Task
  whose progress, step or status changed is ``task.progress``; a Host whose power_state changed is
  ``host.power``; hosts, racks and profiles created, changed (fields that describe the inventory,
  not bookkeeping) or deleted are ``inventory``.
* ``do_orm_execute`` does the same for bulk ``UPDATE host``/``UPDATE task`` statements (the power
  manager's and the lifecycle's compare-and-set): the rows it will change are read first (locked
  on PostgreSQL), then again after it, and the difference is the event.
* ``before_commit`` inserts the collected rows. On PostgreSQL it first takes one transaction-level
  advisory lock, held until the commit: ids come from a sequence when the row is inserted, and
  without the lock a transaction could commit id 11 before another commits id 10, so a reader at
  10 < cursor would skip 10 for ever. Nothing but the commit follows the lock, so no transaction
  waits for another lock while holding it (no deadlock). It then calls ``pg_notify`` on
  ``prov_events``, delivered by PostgreSQL at commit to every API process's listener. SQLite has
  one writer at a time anyway, so commit order is id order there.
* ``after_commit`` wakes this process's streams at once (events_stream registers the callback).

Messages never carry a value of a secret field: an inventory change names the fields only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, func, insert, select, text
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import get_history
from sqlalchemy.sql import Update

from provisioner.models import Event, EventStreamMark, EventStreamRow, Host, Profile, Rack, Task

log = logging.getLogger(__name__)

_PENDING = "prov_event_outbox"  # session.info: the rows this transaction will insert
_WRITTEN = "prov_event_outbox_written"
# pg_advisory_xact_lock key of the stream's inserts: any constant unique to this use ("prov" "ev").
PG_LOCK_KEY = 0x70726F76_6576
CHANNEL = "prov_events"

# Host fields an operator sets (HostCreate/HostUpdate): a change of one is an inventory event.
# State, power and bookkeeping (version, timestamps, install tokens, errors) are not.
HOST_INVENTORY = ("name", "rack_id", "u_position", "roles", "profile_id", "bmc_kind", "bmc_address", "bmc_port",
                  "bmc_username", "bmc_password_enc", "bmc_options", "netboot", "ip_address", "network_bonds",
                  "network_vlans")
# what the message calls a field (never its value)
_FIELD_NAMES = {"rack_id": "rack", "profile_id": "profile", "bmc_password_enc": "bmc_password",
                "network_bonds": "network", "network_vlans": "network"}
RACK_INVENTORY = ("name", "site", "size_u", "network")
PROFILE_INVENTORY = ("name",)  # plus every other column: any change of a profile counts
TASK_FIELDS = ("progress", "status", "step")

# Called after a commit that wrote events, with the engine's URL (events_stream.wake_local).
on_commit: list[Callable[[str], None]] = []

# Retention (settings events_retention_hours / events_retention_rows): pruned by writers, at most
# once per PRUNE_EVERY_S per process, inside a transaction that holds the stream lock anyway.
PRUNE_EVERY_S = 60.0
_prune_lock = threading.Lock()
_last_prune: dict[str, float] = {}


def engine_key(session: Session) -> str:
    """The database a session writes to, as events_stream keys its wakers (password hidden)."""
    return str(session.get_bind().engine.url)


def _pending(session: Session) -> list[dict[str, Any]]:
    return session.info.setdefault(_PENDING, [])  # type: ignore[no-any-return]


def _changed(obj: Any, fields: tuple[str, ...] | None = None) -> list[str]:
    names = fields if fields is not None else tuple(c.key for c in obj.__table__.columns)
    out: list[str] = []
    for name in names:
        if name in obj.__mapper__.attrs and get_history(obj, name).has_changes():
            out.append(name)
    return out


def _field_list(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(_FIELD_NAMES.get(n, n) for n in names))


# --------------------------------------------------------------------------- ORM flushes
@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx: UOWTransaction) -> None:
    out = _pending(session)
    nic_hosts: set[int] = set()
    for obj in session.new:
        if isinstance(obj, Event):
            moved = obj.to_state is not None and obj.to_state != obj.from_state
            kind = "drift" if obj.event == "drift" else ("host.state" if moved else "host.history")
            msg = obj.message or (f"{obj.from_state or '-'} -> {obj.to_state} ({obj.event})" if moved else obj.event)
            out.append({"kind": kind, "host_id": obj.host_id, "host_name": obj.host_name, "task_id": obj.task_id,
                        "state": obj.to_state if moved else obj.event, "message": msg, "at": obj.created_at})
        elif isinstance(obj, Task):
            out.append(_task_row(obj))
        elif isinstance(obj, Host):
            out.append({"kind": "inventory", "host_id": obj.id, "host_name": obj.name, "rack_id": obj.rack_id,
                        "state": "created", "message": f"host {obj.name} created"})
        elif isinstance(obj, Rack | Profile):
            what = "rack" if isinstance(obj, Rack) else "profile"
            out.append({"kind": "inventory", "rack_name": obj.name if isinstance(obj, Rack) else None,
                        "state": "created", "message": f"{what} {obj.name} created"})
        elif obj.__class__.__name__ == "Nic":
            nic_hosts.add(obj.host_id)
    for obj in session.dirty:
        if isinstance(obj, Task):
            if _changed(obj, TASK_FIELDS):
                out.append(_task_row(obj))
        elif isinstance(obj, Host):
            if _changed(obj, ("power_state",)):
                out.append({"kind": "host.power", "host_id": obj.id, "host_name": obj.name, "rack_id": obj.rack_id,
                            "state": obj.power_state, "message": f"power {obj.power_state}"})
            fields = _changed(obj, HOST_INVENTORY)
            if obj.id in nic_hosts:
                fields.append("nics")
                nic_hosts.discard(obj.id)
            if fields:
                out.append({"kind": "inventory", "host_id": obj.id, "host_name": obj.name, "rack_id": obj.rack_id,
                            "state": "updated", "message": f"host {obj.name} updated: {_field_list(fields)}"})
        elif isinstance(obj, Rack):
            fields = _changed(obj, RACK_INVENTORY)
            if fields:
                out.append({"kind": "inventory", "rack_name": obj.name, "state": "updated",
                            "message": f"rack {obj.name} updated: {_field_list(fields)}"})
        elif isinstance(obj, Profile):
            fields = [f for f in _changed(obj) if f not in ("id", "created_at")]
            if fields:
                out.append({"kind": "inventory", "state": "updated",
                            "message": f"profile {obj.name} updated: {_field_list(fields)}"})
    for hid in nic_hosts:  # NICs replaced, host row itself unchanged
        if hid is not None and not any(isinstance(o, Host) and o.id == hid for o in session.new):
            out.append({"kind": "inventory", "host_id": hid, "state": "updated", "message": "host updated: nics"})
    for obj in session.deleted:
        if isinstance(obj, Host):
            out.append({"kind": "inventory", "host_name": obj.name, "rack_id": obj.rack_id, "state": "deleted",
                        "message": f"host {obj.name} deleted"})
        elif isinstance(obj, Rack | Profile):
            what = "rack" if isinstance(obj, Rack) else "profile"
            out.append({"kind": "inventory", "rack_name": obj.name if isinstance(obj, Rack) else None,
                        "state": "deleted", "message": f"{what} {obj.name} deleted"})


def _task_row(task: Task) -> dict[str, Any]:
    what = f"task {task.id} ({task.kind}) {task.status}"
    if task.step:
        what += f": {task.step}"
    if task.error and task.status == "failed":
        what += f": {task.error}"
    return {"kind": "task.progress", "host_id": task.host_id, "rack_id": task.rack_id, "task_id": task.id,
            "state": task.status, "progress": task.progress, "message": what[:2000]}


# --------------------------------------------------------------------------- bulk UPDATEs
_WATCH: dict[str, tuple[type, tuple[str, ...]]] = {
    "host": (Host, ("power_state",)),
    "task": (Task, ("progress", "status", "step")),
}


@event.listens_for(Session, "do_orm_execute")
def _do_orm_execute(state: ORMExecuteState) -> Any:
    if not state.is_update:
        return None
    stmt = state.statement
    if not isinstance(stmt, Update):
        return None
    table = getattr(stmt.table, "name", None)
    watch = _WATCH.get(table or "")
    if watch is None:
        return None
    model, fields = watch
    values = getattr(stmt, "_values", None)
    if values is not None:
        keys = {getattr(k, "key", k) for k in values}
        if not keys & set(fields):
            return None  # e.g. the lifecycle's state CAS: its Event row is the event
    session = state.session
    cols = [model.__table__.c[f] for f in ("id", *fields)]  # type: ignore[attr-defined]
    before_q = select(*cols)
    if stmt.whereclause is not None:
        before_q = before_q.where(stmt.whereclause)
    if session.get_bind().dialect.name == "postgresql":
        before_q = before_q.with_for_update()  # nobody changes them between this read and the UPDATE
    before = {r[0]: tuple(r[1:]) for r in session.execute(before_q).all()}
    result = state.invoke_statement()
    if not before:
        return result
    after = session.execute(select(*cols).where(cols[0].in_(list(before)))).all()
    out = _pending(session)
    for row in after:
        if tuple(row[1:]) == before.get(row[0]):
            continue
        if model is Host:
            out.append({"kind": "host.power", "host_id": row[0], "state": row[1], "message": f"power {row[1]}"})
        else:
            t = Task.__table__.c  # type: ignore[attr-defined]
            tq = select(t.id, t.kind, t.status, t.step, t.progress, t.host_id, t.rack_id, t.error).where(t.id == row[0])
            got = session.execute(tq).first()
            if got is not None:
                out.append(_task_row(Task(**got._asdict())))
    return result


# --------------------------------------------------------------------------- commit
@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if session.new or session.dirty or session.deleted:
        session.flush()  # the commit's own flush comes after this hook: collect its rows now
    rows = session.info.pop(_PENDING, None)
    if not rows:
        return
    conn = session.connection()
    pg = conn.dialect.name == "postgresql"
    _resolve_names(session, rows)
    if pg:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
    now = datetime.now(UTC)
    conn.execute(insert(EventStreamRow.__table__), [  # type: ignore[attr-defined]
        {"created_at": r.get("at") or now, "kind": r["kind"], "host_name": r.get("host_name"),
         "rack_name": r.get("rack_name"), "task_id": r.get("task_id"), "state": (r.get("state") or None),
         "message": (r.get("message") or "")[:4000], "progress": r.get("progress")} for r in rows])
    _maybe_prune(session, now)
    if pg:
        conn.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANNEL})
    session.info[_WRITTEN] = True


def _resolve_names(session: Session, rows: list[dict[str, Any]]) -> None:
    """Host and rack names (and a host's rack) for rows that only know ids: one query each."""
    host_ids = {r["host_id"] for r in rows if r.get("host_id") is not None}
    hosts: dict[int, tuple[str, int | None]] = {}
    if host_ids:
        h = Host.__table__.c  # type: ignore[attr-defined]
        q = select(h.id, h.name, h.rack_id).where(h.id.in_(host_ids))
        hosts = {hid: (name, rid) for hid, name, rid in session.execute(q).all()}
    for r in rows:
        found = hosts.get(r.get("host_id") or -1)
        if found is not None:
            r["host_name"] = r.get("host_name") or found[0]
            if r.get("rack_id") is None:
                r["rack_id"] = found[1]
    rack_ids = {r["rack_id"] for r in rows if r.get("rack_id") is not None and not r.get("rack_name")}
    if rack_ids:
        rc = Rack.__table__.c  # type: ignore[attr-defined]
        q = select(rc.id, rc.name).where(rc.id.in_(rack_ids))
        racks: dict[int, str] = {rid: name for rid, name in session.execute(q).all()}
        for r in rows:
            if not r.get("rack_name") and r.get("rack_id") is not None:
                r["rack_name"] = racks.get(r["rack_id"])


def _maybe_prune(session: Session, now: datetime) -> None:
    from provisioner.settings import get_settings

    url = engine_key(session)
    with _prune_lock:
        if time.monotonic() - _last_prune.get(url, -PRUNE_EVERY_S) < PRUNE_EVERY_S:
            return
        _last_prune[url] = time.monotonic()
    s = get_settings()
    prune(session, now - timedelta(hours=s.events_retention_hours), s.events_retention_rows)


def prune(session: Session, older_than: datetime, keep_rows: int) -> int:
    """Delete events older than ``older_than`` and beyond the newest ``keep_rows``; record the newest
    id deleted in event_stream_mark (a resume from before it is told). Returns that id (0: none)."""
    conn = session.connection()
    t = EventStreamRow.__table__  # type: ignore[attr-defined]
    top = conn.execute(select(func.max(t.c.id))).scalar() or 0
    by_age = conn.execute(select(func.max(t.c.id)).where(t.c.created_at < older_than)).scalar() or 0
    through = max(int(by_age), int(top) - keep_rows)
    if through <= 0:
        return 0
    gone = conn.execute(delete(t).where(t.c.id <= through)).rowcount
    if not gone:
        return 0
    m = EventStreamMark.__table__  # type: ignore[attr-defined]
    if conn.execute(select(m.c.id).where(m.c.id == 1)).first() is None:
        conn.execute(insert(m).values(id=1, pruned_through=through))
    else:
        conn.execute(m.update().where(m.c.id == 1).where(m.c.pruned_through < through).values(pruned_through=through))
    log.info("event stream: pruned %d events through id %d", gone, through)
    return through


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_WRITTEN, False):
        url = engine_key(session)
        for fn in on_commit:
            try:
                fn(url)
            except Exception:  # a closed loop of a finished test app: nothing to wake
                log.debug("event stream wake-up failed", exc_info=True)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outer transaction ended: commit (popped) or rollback (dropped)
        session.info.pop(_PENDING, None)
        session.info.pop(_WRITTEN, None)
