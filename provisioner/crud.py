"""Keyword-only functions over a session. Routes and workflows never query tables directly.

Lookups accept a numeric id or a name, so the CLI and API can say ``web01``.
"""

from __future__ import annotations

from sqlmodel import Session, select

from provisioner.errors import NotFound
from provisioner.models import Host, Nic, Profile, Rack


def _by_ident(session: Session, model: type, ident: str | int, kind: str):  # type: ignore[no-untyped-def]
    row = None
    if isinstance(ident, int) or (isinstance(ident, str) and ident.isdigit()):
        row = session.get(model, int(ident))
    if row is None and isinstance(ident, str):
        row = session.exec(select(model).where(model.name == ident)).first()
    if row is None:
        raise NotFound(kind=kind, name=str(ident))
    return row


def get_host(session: Session, ident: str | int) -> Host:
    return _by_ident(session, Host, ident, "host")  # type: ignore[no-any-return]


def get_rack(session: Session, ident: str | int) -> Rack:
    return _by_ident(session, Rack, ident, "rack")  # type: ignore[no-any-return]


def get_profile(session: Session, ident: str | int) -> Profile:
    return _by_ident(session, Profile, ident, "profile")  # type: ignore[no-any-return]


def host_nics(session: Session, *, host_id: int) -> list[Nic]:
    return list(session.exec(select(Nic).where(Nic.host_id == host_id).order_by(Nic.id)).all())  # type: ignore[arg-type]


def host_by_mac(session: Session, *, mac: str) -> Host | None:
    nic = session.exec(select(Nic).where(Nic.mac == mac.lower())).first()
    return session.get(Host, nic.host_id) if nic else None


def rack_hosts(session: Session, *, rack_id: int) -> list[Host]:
    return list(session.exec(select(Host).where(Host.rack_id == rack_id).order_by(Host.name)).all())
