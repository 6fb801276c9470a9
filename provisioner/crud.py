"""Keyword-only functions over a session. Routes and workflows never query tables directly.

Lookups accept a numeric id or a name, so the CLI and API can say ``web01``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Text, cast, delete, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from provisioner import host_json, lifecycle, netspec, secret_store
from provisioner import states as S
from provisioner.errors import Conflict, InvalidInput, NotFound
from provisioner.models import Event, Host, Nic, Profile, Rack, Task, utcnow
from provisioner.schemas import (
    DEFAULT_BMC_PORT,
    HOST_SORT_KEYS,
    NETWORK_BMC_KINDS,
    HostCreate,
    HostPublic,
    HostUpdate,
    NicIn,
    ProfileCreate,
    ProfileUpdate,
    RackCreate,
    RackPublic,
    RackUpdate,
)
from provisioner.settings import Settings

log = logging.getLogger(__name__)


def _lookups(ident: str | int) -> Iterator[tuple[str, Any]]:
    """How a CLI/API identifier is looked up, in order: ("id", n) and/or ("name", text)."""
    # Ids are 32-bit integer columns: a larger number (or a non-ASCII digit) cannot be an id,
    # and asking PostgreSQL for one would be an "integer out of range" error.
    is_num = isinstance(ident, int) or (isinstance(ident, str) and ident.isascii() and ident.isdigit())
    if is_num and 0 < int(ident) < 2**31:
        yield "id", int(ident)
    if isinstance(ident, str):
        yield "name", ident
        if ident != ident.lower():  # names are stored lower-case (validators.py)
            yield "name", ident.lower()


def _by_ident(session: Session, model: type, ident: str | int, kind: str):  # type: ignore[no-untyped-def]
    for how, value in _lookups(ident):
        if how == "id":
            row = session.get(model, value)
        else:
            row = session.exec(select(model).where(model.name == value)).first()  # type: ignore[attr-defined]
        if row is not None:
            return row
    raise NotFound(kind=kind, name=str(ident))


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


# =========================================================================== writes, listings
# Everything below raises provisioner.errors classes only: NotFound (404),
# Conflict (409, naming the field) and InvalidInput (422, naming the field).

def _conflict_from_integrity(exc: IntegrityError) -> Conflict:
    """A unique index fired after our pre-checks (a concurrent insert won): still a 409."""
    text = str(exc.orig).lower()
    for needle, field in (("mac", "nics.mac"), ("bmc", "bmc.address"), ("name", "name")):
        if needle in text:
            return Conflict(reason=f"{field} already in use (concurrent change)", field=field)
    return Conflict(reason="conflicts with an existing row", field="body")


def _commit(session: Session) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise _conflict_from_integrity(exc) from None


# --------------------------------------------------------------------------- racks
def list_racks(session: Session, *, limit: int = 100, offset: int = 0,
               site: str | None = None) -> tuple[list[RackPublic], int]:
    """A page of racks by name; ``site``: only the racks at that site (exact match)."""
    where = [Rack.site == site] if site is not None else []
    total = session.exec(select(func.count()).select_from(Rack).where(*where)).one()
    racks = list(session.exec(select(Rack).where(*where).order_by(Rack.name)  # type: ignore[arg-type]
                              .limit(limit).offset(offset)).all())
    counts: dict[int, int] = {}
    if racks:
        rows = session.exec(
            select(Host.rack_id, func.count())
            .where(col(Host.rack_id).in_([r.id for r in racks]))
            .group_by(Host.rack_id)  # type: ignore[arg-type]
        ).all()
        counts = {int(rid): int(n) for rid, n in rows if rid is not None}
    return [rack_public(r, counts.get(r.id or 0, 0)) for r in racks], int(total)


def rack_public(rack: Rack, host_count: int) -> RackPublic:
    return RackPublic(id=rack.id or 0, name=rack.name, site=rack.site, size_u=rack.size_u,
                      network=rack.network, host_count=host_count, created_at=rack.created_at)


def rack_host_count(session: Session, *, rack_id: int) -> int:
    return int(session.exec(select(func.count()).select_from(Host).where(Host.rack_id == rack_id)).one())


def create_rack(session: Session, *, data: RackCreate) -> Rack:
    if session.exec(select(Rack.id).where(Rack.name == data.name)).first() is not None:
        raise Conflict(reason=f"rack {data.name!r} already exists", field="name")
    rack = Rack(name=data.name, site=data.site, size_u=data.size_u, network=data.network)
    session.add(rack)
    _commit(session)
    session.refresh(rack)
    return rack


def update_rack(session: Session, rack: Rack, *, data: RackUpdate) -> Rack:
    if data.size_u is not None and rack.id is not None:
        top = session.exec(select(func.max(Host.u_position)).where(Host.rack_id == rack.id)).one()
        if top is not None and top > data.size_u:
            raise InvalidInput(field="size_u", reason=f"a host sits at U{top}, above the new size {data.size_u}")
    for key, value in data.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(rack, key, value)
    session.add(rack)
    _commit(session)
    session.refresh(rack)
    return rack


def delete_rack(session: Session, rack: Rack) -> None:
    n = rack_host_count(session, rack_id=rack.id or 0)
    if n:
        raise Conflict(reason=f"rack {rack.name!r} still holds {n} host(s); move or delete them first",
                       field="rack", host_count=n)
    session.delete(rack)
    _commit(session)


# --------------------------------------------------------------------------- profiles
def list_profiles(session: Session, *, limit: int = 100, offset: int = 0) -> tuple[list[Profile], int]:
    total = session.exec(select(func.count()).select_from(Profile)).one()
    rows = session.exec(select(Profile).order_by(Profile.name).limit(limit).offset(offset)).all()  # type: ignore[arg-type]
    return list(rows), int(total)


def create_profile(session: Session, *, data: ProfileCreate) -> Profile:
    if session.exec(select(Profile.id).where(Profile.name == data.name)).first() is not None:
        raise Conflict(reason=f"profile {data.name!r} already exists", field="name")
    profile = Profile(**data.model_dump())
    session.add(profile)
    _commit(session)
    session.refresh(profile)
    return profile


def update_profile(session: Session, profile: Profile, *, data: ProfileUpdate) -> Profile:
    for key, value in data.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(profile, key, value)
    session.add(profile)
    _commit(session)
    session.refresh(profile)
    return profile


def delete_profile(session: Session, profile: Profile) -> None:
    n = session.exec(select(func.count()).select_from(Host).where(Host.profile_id == profile.id)).one()
    if n:
        raise Conflict(reason=f"profile {profile.name!r} is used by {n} host(s)", field="profile", host_count=int(n))
    session.delete(profile)
    _commit(session)


# --------------------------------------------------------------------------- hosts
def _rack_id(session: Session, name: str | None, field: str = "rack") -> int | None:
    if name is None:
        return None
    rid = session.exec(select(Rack.id).where(Rack.name == name)).first()
    if rid is None:
        raise InvalidInput(field=field, reason=f"unknown rack {name!r}")
    return int(rid)


def _profile_id(session: Session, name: str | None, field: str = "profile") -> int | None:
    if name is None:
        return None
    pid = session.exec(select(Profile.id).where(Profile.name == name)).first()
    if pid is None:
        raise InvalidInput(field=field, reason=f"unknown profile {name!r}")
    return int(pid)


def _check_u(session: Session, rack_id: int | None, u: int | None) -> None:
    if rack_id is None or u is None:
        return
    rack = session.get(Rack, rack_id)
    if rack is not None and u > rack.size_u:
        raise InvalidInput(field="u_position", reason=f"U{u} is outside rack {rack.name!r} ({rack.size_u}U)")


def _check_macs(session: Session, macs: list[str], host_id: int | None) -> None:
    if not macs:
        return
    q = select(Nic.mac, Host.name).join(Host, col(Host.id) == col(Nic.host_id)).where(col(Nic.mac).in_(macs))
    if host_id is not None:
        q = q.where(Nic.host_id != host_id)
    clash = session.exec(q).first()
    if clash is not None:
        i = macs.index(clash[0])
        raise Conflict(reason=f"MAC {clash[0]} already belongs to host {clash[1]!r}", field=f"nics[{i}].mac",
                       host=clash[1])


def _check_bmc(session: Session, address: str | None, port: int | None, host_id: int | None) -> None:
    if address is None or port is None:
        return
    q = select(Host.name).where(Host.bmc_address == address, Host.bmc_port == port)
    if host_id is not None:
        q = q.where(Host.id != host_id)
    other = session.exec(q).first()
    if other is not None:
        raise Conflict(reason=f"BMC {address}:{port} already belongs to host {other!r}", field="bmc.address",
                       host=other)


def create_host(session: Session, *, data: HostCreate, actor: str = "system",
                settings: Settings | None = None) -> Host:
    if session.exec(select(Host.id).where(Host.name == data.name)).first() is not None:
        raise Conflict(reason=f"host {data.name!r} already exists", field="name")
    rack_id = _rack_id(session, data.rack)
    profile_id = _profile_id(session, data.profile)
    _check_u(session, rack_id, data.u_position)
    _check_macs(session, [n.mac for n in data.nics], None)
    bmc = data.bmc
    port = bmc.port if bmc.port is not None else (DEFAULT_BMC_PORT.get(bmc.kind) if bmc.address else None)
    _check_bmc(session, bmc.address, port, None)
    host = Host(
        name=data.name,
        rack_id=rack_id,
        u_position=data.u_position,
        roles=list(data.roles),
        profile_id=profile_id,
        bmc_kind=bmc.kind,
        bmc_address=bmc.address,
        bmc_port=port,
        bmc_username=bmc.username,
        bmc_password_enc=secret_store.encrypt(bmc.password, settings) if bmc.password else None,
        bmc_options=dict(bmc.options),
        netboot=data.netboot,
        ip_address=data.ip_address,
        network_bonds=[b.model_dump() for b in data.network.bonds],
        network_vlans=[v.model_dump() for v in data.network.vlans],
    )
    session.add(host)
    try:
        session.flush()
        for nic in data.nics:
            session.add(_nic_row(host.id or 0, nic))
        session.add(Event(host_id=host.id, to_state=host.state, event="enroll", actor=actor,
                          message=f"host {host.name} enrolled"))
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise _conflict_from_integrity(exc) from None
    session.refresh(host)
    log.info("host %s enrolled by %s", host.name, actor, extra={"host": host.name})
    return host


def _nic_row(host_id: int, nic: NicIn) -> Nic:
    return Nic(host_id=host_id, mac=nic.mac, name=nic.name, boot=nic.boot, ip=nic.ip, address=nic.address,
               gateway=nic.gateway, nameservers=list(nic.nameservers), search=list(nic.search), mtu=nic.mtu)


def update_host(session: Session, host: Host, *, data: HostUpdate, settings: Settings | None = None) -> Host:
    """Apply a PATCH and commit; returns ``host`` as written (not re-read from the database)."""
    fields = data.model_fields_set
    if "rack" in fields:
        host.rack_id = _rack_id(session, data.rack)
    if "profile" in fields:
        host.profile_id = _profile_id(session, data.profile)
    if "u_position" in fields:
        host.u_position = data.u_position
    if "rack" in fields or "u_position" in fields:  # the placement only changes here (racks cannot shrink below
        _check_u(session, host.rack_id, host.u_position)  # their hosts: update_rack), so only check it then
    if data.roles is not None:
        host.roles = list(data.roles)
    if data.netboot is not None:
        host.netboot = data.netboot
    if "ip_address" in fields:
        host.ip_address = data.ip_address
    if data.bmc is not None:
        b = data.bmc
        bf = b.model_fields_set
        if b.kind is not None:
            host.bmc_kind = b.kind
        if "address" in bf:
            host.bmc_address = b.address
        if "port" in bf:
            host.bmc_port = b.port
        if host.bmc_address and host.bmc_port is None:
            host.bmc_port = DEFAULT_BMC_PORT.get(host.bmc_kind)
        if "username" in bf:
            host.bmc_username = b.username
        if "password" in bf:
            host.bmc_password_enc = secret_store.encrypt(b.password, settings) if b.password else None
        if b.options is not None:
            host.bmc_options = dict(b.options)
        if host.bmc_kind in NETWORK_BMC_KINDS and not host.bmc_address:  # as HostCreate refuses it
            raise InvalidInput(field="bmc.address", reason=f"required when kind is {host.bmc_kind!r} "
                                                           "(kind 'manual': a host powered by hand)")
        _check_bmc(session, host.bmc_address, host.bmc_port, host.id)
    if data.nics is not None:
        _check_macs(session, [n.mac for n in data.nics], host.id)
    if (data.nics is None) != (data.network is None):  # one replaced: check it with the stored other
        nics = data.nics if data.nics is not None else host_nics(session, host_id=host.id or 0)
        network = data.network or netspec.network_of(host.network_bonds, host.network_vlans)
        netspec.raise_invalid(netspec.problems(nics, network))
    if data.network is not None:
        host.network_bonds = [b.model_dump() for b in data.network.bonds]
        host.network_vlans = [v.model_dump() for v in data.network.vlans]
    host.updated_at = utcnow()
    session.add(host)
    try:
        if data.nics is not None:
            session.execute(delete(Nic).where(col(Nic.host_id) == host.id))
            session.flush()
            for nic in data.nics:
                session.add(_nic_row(host.id or 0, nic))
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise _conflict_from_integrity(exc) from None
    # Not refreshed: the object holds what was written (expire_on_commit=False), and the API
    # answers with the row read back by host_public_dict - one query instead of two.
    return host


def delete_host(session: Session, host: Host) -> None:
    if host.state in S.TRANSIENT:
        raise Conflict(
            reason=f"host {host.name} is {host.state}: abort or wait for the running phase before deleting it",
            field="state", current_state=host.state, allowed_events=lifecycle.allowed_events(host.state),
        )
    session.execute(delete(Nic).where(col(Nic.host_id) == host.id))
    # Its history stays, detached and named, so it can still be read by name (crud_audit.py).
    session.execute(update(Event).where(col(Event.host_id) == host.id).values(host_id=None, host_name=host.name))
    session.delete(host)
    _commit(session)
    log.info("host %s deleted", host.name, extra={"host": host.name})


def _host_filters(
    *, state: str | None = None, rack: str | None = None, role: str | None = None,
    power_state: str | None = None, profile: str | None = None, name: str | None = None,
) -> list[Any]:
    conds: list[Any] = []
    if state is not None:
        conds.append(Host.state == state)
    if power_state is not None:
        conds.append(Host.power_state == power_state)
    if rack is not None:
        # "= (scalar subquery)" (rack names are unique), not "IN (subquery)": SQLite then reads the
        # rack's hosts by ix_host_rack_id and sorts them (a rack holds tens of hosts), instead of
        # walking the whole name index for the few that match (2.7 -> 0.8 ms with 10,000 hosts).
        conds.append(col(Host.rack_id) == select(Rack.id).where(Rack.name == rack).scalar_subquery())
    if profile is not None:
        conds.append(col(Host.profile_id).in_(select(Profile.id).where(Profile.name == profile)))
    if role is not None:
        # roles is a JSON list of slugs (no quotes possible), stored as its JSON text on both
        # back ends, so a LIKE on '"role"' matches one whole element portably.
        esc = role.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(cast(Host.__table__.c.roles, Text).like(f'%"{esc}"%', escape="\\"))  # type: ignore[attr-defined]
    if name is not None:
        esc = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(col(Host.name).like(f"{esc}%", escape="\\"))
    return conds


def list_hosts(
    session: Session, *, state: str | None = None, rack: str | None = None, role: str | None = None,
    power_state: str | None = None, profile: str | None = None, name: str | None = None,
    sort: str = "name", limit: int = 100, offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of hosts as HostPublic-shaped dicts (see host_json.py), with NICs, rack and profile names,
    in two queries (three when the page is full and the total is not known from it).
    Dicts, not models: the route serialises them once (see routes/hosts.py)."""
    desc = sort.startswith("-")
    key = sort.lstrip("-+")
    if key not in HOST_SORT_KEYS:
        raise InvalidInput(field="sort", reason=f"cannot sort by {key!r} (one of {', '.join(HOST_SORT_KEYS)})")
    conds = _host_filters(state=state, rack=rack, role=role, power_state=power_state, profile=profile, name=name)
    column = getattr(Host, key)
    order = [column.desc() if desc else column.asc()]
    if key not in ("id", "name"):  # names are unique; other keys need a tie-break for stable pages
        order.append(col(Host.id).desc() if desc else col(Host.id).asc())
    # Plain rows, not ORM objects: a listing only reads, and hydrating 100 Host objects
    # costs more than the queries themselves (bench/api). Core rows on the session's connection.
    conn = session.connection()
    raw = conn.dialect.name == "sqlite"
    # The page is chosen by ids alone, then its rows are read with the rack and profile names: a join,
    # or name subqueries next to the OFFSET, would run for every row the OFFSET skips (27 ms instead
    # of 2 on PostgreSQL at offset 5000). The outer ORDER BY repeats the inner one (a subquery's order
    # is not kept); the sort key comes along for it.
    page = sa_select(col(Host.id).label("id"), column.label("k")).where(*conds).order_by(*order) \
        .limit(limit).offset(offset).subquery("page")
    outer_order = [page.c.k.desc() if desc else page.c.k.asc()]
    if key not in ("id", "name"):
        outer_order.append(page.c.id.desc() if desc else page.c.id.asc())
    rows = conn.execute(host_json.one_host_select(raw).join(page, page.c.id == Host.id).order_by(*outer_order)).all()
    if 0 < len(rows) < limit or (not rows and offset == 0):
        total = offset + len(rows)  # a short page is the last one: no COUNT(*) over the table needed
    else:
        total = conn.execute(sa_select(func.count()).select_from(Host.__table__).where(*conds)).scalar_one()  # type: ignore[attr-defined]
    return host_json.from_rows(session, rows), int(total)


def host_public_dict(session: Session, host: Host | str | int) -> dict[str, Any]:
    """One host as a HostPublic-shaped dict, for routes that serialise it themselves: from a Host
    object, or looked up by id or name like ``get_host`` (then 2 queries and no ORM object)."""
    if isinstance(host, Host):
        return host_json.from_hosts(session, [host])[0]
    conn = session.connection()
    host_t = Host.__table__  # type: ignore[attr-defined]
    stmt = host_json.one_host_select(conn.dialect.name == "sqlite")
    for how, value in _lookups(host):
        row = conn.execute(stmt.where(host_t.c[how] == value)).first()
        if row is not None:
            return host_json.from_rows(session, [row])[0]
    raise NotFound(kind="host", name=str(host))


def hosts_public(session: Session, hosts: list[Host]) -> list[HostPublic]:
    return [HostPublic.model_validate(d) for d in host_json.from_hosts(session, hosts)]


def host_public(session: Session, host: Host) -> HostPublic:
    return hosts_public(session, [host])[0]


def host_state_counts(session: Session) -> dict[str, int]:
    rows = session.exec(select(Host.state, func.count()).group_by(Host.state)).all()  # type: ignore[arg-type]
    return {str(s): int(n) for s, n in rows}


# --------------------------------------------------------------------------- tasks and events
def list_tasks(
    session: Session, *, host_id: int | None = None, status: str | None = None, kind: str | None = None,
    limit: int = 100, offset: int = 0,
) -> tuple[list[Task], int]:
    conds: list[Any] = []
    if host_id is not None:
        conds.append(Task.host_id == host_id)
    if status is not None:
        conds.append(Task.status == status)
    if kind is not None:
        conds.append(Task.kind == kind)
    total = session.exec(select(func.count()).select_from(Task).where(*conds)).one()
    rows = session.exec(select(Task).where(*conds).order_by(col(Task.id).desc()).limit(limit).offset(offset)).all()
    return list(rows), int(total)


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id) if 0 < task_id < 2**31 else None
    if task is None:
        raise NotFound(kind="task", name=str(task_id))
    return task


def list_events(
    session: Session, *, host_id: int | None = None, event: str | None = None, limit: int = 100, offset: int = 0,
) -> tuple[list[Event], int]:
    conds: list[Any] = []
    if host_id is not None:
        conds.append(Event.host_id == host_id)
    if event is not None:
        conds.append(Event.event == event)
    total = session.exec(select(func.count()).select_from(Event).where(*conds)).one()
    rows = session.exec(select(Event).where(*conds).order_by(col(Event.id).asc()).limit(limit).offset(offset)).all()
    return list(rows), int(total)
