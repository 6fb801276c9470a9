"""Reads of the audit log, and the history a deleted host leaves behind.

The rows themselves are written by provisioner/audit.py, in the transaction of each change.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, func, select

from provisioner.errors import InvalidInput
from provisioner.models import AuditLog, Event


def _actor_filter(actor: str) -> Any:
    """``admin``, ``token:admin`` or a token id (digits: that id, or a token so named)."""
    name = actor.removeprefix("token:")
    conds = [col(AuditLog.actor) == f"token:{name}", col(AuditLog.actor) == actor]
    if name.isascii() and name.isdigit() and 0 < int(name) < 2**31:
        conds.append(col(AuditLog.token_id) == int(name))
    return or_(*conds)


def _object_filter(obj: str) -> Any:
    """``host/web01`` (type and name), ``host/`` (every host) or ``web01`` (that name, any type).

    The name may itself hold a slash: ``template/kickstart/base``.
    """
    if "/" not in obj:
        return col(AuditLog.object_name) == obj
    object_type, name = obj.split("/", 1)
    if not object_type:
        raise InvalidInput(field="object", reason="expected TYPE/NAME, TYPE/ or NAME")
    cond = col(AuditLog.object_type) == object_type
    return cond if name in ("", "*") else cond & (col(AuditLog.object_name) == name)


def list_audit(
    session: Session, *, actor: str | None = None, obj: str | None = None, action: str | None = None,
    limit: int = 100, cursor: int | None = None,
) -> tuple[list[AuditLog], int | None]:
    """One page, newest first, and the cursor of the next (older) page (None: this is the last)."""
    q = select(AuditLog)
    if actor:
        q = q.where(_actor_filter(actor))
    if obj:
        q = q.where(_object_filter(obj))
    if action:
        q = q.where(col(AuditLog.action) == action)
    if cursor is not None:
        q = q.where(col(AuditLog.id) < cursor)
    rows = list(session.exec(q.order_by(col(AuditLog.id).desc()).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def deleted_host_events(
    session: Session, *, name: str, event: str | None = None, limit: int = 100, offset: int = 0,
) -> tuple[list[Event], int]:
    """History left by deleted hosts of this name (crud.delete_host detaches it), oldest first."""
    conds: list[Any] = [col(Event.host_name) == name.lower(), col(Event.host_id).is_(None)]
    if event is not None:
        conds.append(col(Event.event) == event)
    total = session.exec(select(func.count()).select_from(Event).where(*conds)).one()
    rows = session.exec(select(Event).where(*conds).order_by(col(Event.id).asc()).limit(limit).offset(offset)).all()
    return list(rows), int(total)
