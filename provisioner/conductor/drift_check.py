"""Periodic drift check: the controller compares reality with the last applied inventory.

Every ``settings.drift_check_interval`` seconds (0 = off), when an inventory has
been applied, one pass builds the same ``World`` that ``prov drift`` fetches
over the API - read here straight from the database through crud's listing
functions, so the comparison sees the same host/profile/rack shapes - runs
``gitops.drift.detect`` and stores the result (time + drift list) on the
newest ``InventoryApply`` row. ``GET /api/v1/gitops/drift/last``, the
``prov_drift_objects`` gauge and ``prov drift --last`` read it.

History: a host gets one line when its drift set changes (new drift, drift
changed, drift resolved), compared with the previous stored pass - not one line
per pass, so a host powered off for a week does not fill its history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from provisioner import crud
from provisioner.conductor import applied
from provisioner.conductor.periodic import start_periodic
from provisioner.db import get_engine
from provisioner.errors import ProvError
from provisioner.gitops import drift as drift_mod
from provisioner.gitops.world import World
from provisioner.models import Event, Host, InventoryApply, utcnow
from provisioner.schemas import ProfilePublic
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR = "conductor:drift"
PAGE = 1000  # rows per listing query, like gitops.world's API pages
# Guests of one host, by name (raises ProvError when the host's libvirt does not answer).
GuestLister = Callable[[Session, Settings, str], list[dict[str, Any]]]


@dataclass
class CheckResult:
    applied_id: int
    checked_at: datetime
    drift: list[dict[str, Any]]
    history: list[str]  # "host: message" lines written by this pass


def _libvirt_guests(session: Session, settings: Settings, host: str) -> list[dict[str, Any]]:
    # Imported here: conductor.virt pulls in libvirt, which only guest checks need.
    from provisioner.conductor.virt import connect

    with connect(settings, host) as conn:  # resolves the host in its own short session
        return conn.list_guests()


def latest_applied(session: Session) -> InventoryApply | None:
    return applied.latest(session)


def _all_pages(fetch: Callable[[int], tuple[Sequence[Any], int]]) -> Iterator[Any]:
    """Every row of a paged crud listing (``fetch(offset) -> (rows, total)``)."""
    offset = 0
    while True:
        rows, total = fetch(offset)
        yield from rows
        offset += len(rows)
        if not rows or offset >= total:
            return


def world_from_db(session: Session, settings: Settings, row: InventoryApply,
                  list_guests: GuestLister | None = None) -> tuple[World, set[str]]:
    """The World as the API would list it, and the hosts whose guests could not be listed."""
    world = World(applied=applied.record_dict(session, settings, row))
    for prof in _all_pages(lambda o: crud.list_profiles(session, limit=PAGE, offset=o)):
        d = ProfilePublic.model_validate(prof).model_dump(mode="json")
        world.profiles[d["name"]] = d
    world.racks.update({r.name: r.model_dump(mode="json")
                        for r in _all_pages(lambda o: crud.list_racks(session, limit=PAGE, offset=o))})
    world.hosts.update({str(h["name"]): h
                        for h in _all_pages(lambda o: crud.list_hosts(session, limit=PAGE, offset=o))})
    unknown: set[str] = set()
    inv = drift_mod.inventory_from_applied(world.applied or {})
    lister = list_guests or _libvirt_guests
    for name, h in sorted(inv.hosts.items()) if inv else ():
        if not h.guests or name not in world.hosts:
            continue
        try:
            world.guests[name] = {g["name"]: g for g in lister(session, settings, name)}
        except ProvError as exc:
            # Unknown is not missing: a host whose libvirt is down gets no guest-missing drift.
            log.warning("drift check: cannot list the guests of %s: %s", name, exc.message)
            unknown.add(name)
    return world, unknown


def host_of(obj: str) -> str | None:
    """``host/web01`` and ``guest/web01/vm1`` belong to host web01; profiles and racks to no host."""
    parts = obj.split("/")
    if parts[0] in ("host", "guest") and len(parts) >= 2:
        return parts[1]
    return None


def by_host(drift: list[dict[str, Any]]) -> dict[str, frozenset[tuple[str, str, str]]]:
    out: dict[str, set[tuple[str, str, str]]] = {}
    for d in drift:
        host = host_of(d.get("object", ""))
        if host is not None:
            out.setdefault(host, set()).add((d.get("object", ""), d.get("kind", ""), d.get("detail", "")))
    return {h: frozenset(s) for h, s in out.items()}


def history_lines(previous: list[dict[str, Any]] | None, current: list[dict[str, Any]]) -> dict[str, str]:
    """host -> the one history line to write, for hosts whose drift set changed since ``previous``."""
    before, now = by_host(previous or []), by_host(current)
    lines: dict[str, str] = {}
    for host in sorted(set(before) | set(now)):
        old, new = before.get(host, frozenset()), now.get(host, frozenset())
        if old == new:
            continue
        if not new:
            lines[host] = "drift resolved: matches the last applied inventory again"
            continue
        items = "; ".join(f"{kind} {obj}: {detail}" if obj != f"host/{host}" else f"{kind}: {detail}"
                          for obj, kind, detail in sorted(new, key=lambda t: (t[0], t[1])))
        lines[host] = f"drift detected: {items}"
    return lines


def _previous_drift(session: Session) -> list[dict[str, Any]] | None:
    """The drift list of the latest stored pass (possibly against an older applied inventory)."""
    row = session.exec(select(InventoryApply).where(col(InventoryApply.drift_checked_at).is_not(None))
                       .order_by(col(InventoryApply.drift_checked_at).desc()).limit(1)).first()
    return list(row.drift or []) if row is not None else None


def check_once(settings: Settings | None = None, *, list_guests: GuestLister | None = None) -> CheckResult | None:
    """One pass; None when nothing has been applied yet (nothing to compare with)."""
    settings = settings or get_settings()
    with Session(get_engine(settings), expire_on_commit=False) as session:
        row = latest_applied(session)
        if row is None or not row.document or row.id is None:
            return None
        world, unknown = world_from_db(session, settings, row, list_guests)
        found = [d for d in drift_mod.to_dicts(drift_mod.detect(world))
                 if not (d["kind"] == "guest-missing" and host_of(d["object"]) in unknown)]
        previous = _previous_drift(session)
        lines = history_lines(previous, found)
        now = utcnow()
        row.drift, row.drift_checked_at = found, now
        session.add(row)
        written: list[str] = []
        if lines:
            ids = dict(session.exec(select(Host.name, Host.id).where(col(Host.name).in_(sorted(lines)))).all())  # type: ignore[call-overload]
            for host, message in lines.items():
                if ids.get(host) is None:
                    continue  # a missing host has no history to write to
                session.add(Event(host_id=ids[host], event="drift", message=message[:2000], actor=ACTOR))
                written.append(f"{host}: {message}")
        session.commit()
        return CheckResult(row.id, now, found, written)


def last_result(session: Session) -> dict[str, Any]:
    """What ``GET /gitops/drift/last`` returns: the newest applied inventory's latest check."""
    row = latest_applied(session)
    if row is None or not row.document:
        return {"applied_id": None, "checked_at": None, "drift": [], "count": 0}
    drift = list(row.drift or [])
    return {"applied_id": row.id, "checked_at": row.drift_checked_at.isoformat() if row.drift_checked_at else None,
            "drift": drift, "count": len(drift)}


def start(settings: Settings | None = None, interval: float | None = None,
          *, list_guests: GuestLister | None = None) -> Callable[[], None]:
    """Run check_once every ``interval`` seconds (default settings.drift_check_interval; 0 = off)
    on a daemon thread; returns the stop callable."""
    settings = settings or get_settings()
    interval = interval if interval is not None else settings.drift_check_interval
    return start_periodic("drift-check", interval, lambda: check_once(settings, list_guests=list_guests))
