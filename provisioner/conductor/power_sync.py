"""Power sync: a periodic poll of every host's power state, once per interval cluster-wide.

The round is a DBOS scheduled workflow (conductor/engine/schedules.py: one tick runs on one
conductor of the cluster). It spreads the BMCs over the interval by a stable hash: host ``h`` is
polled at ``tick + offset(h)``, ``offset = (crc32(h) mod slots) * interval / slots`` with slots
of SLOT_S, so a host keeps its time in the interval from round to round and process to process,
1,000 BMCs are never hit at once and UDP bursts do not cause the losses operators complain
about; at most ``power_concurrency`` calls are in flight (each part reports its peak). A change
of power state becomes a history line (the power service writes it); a BMC that stops answering
is flagged (``bmc_reachable=False`` and a history line) and the flag is cleared, with a line,
when it answers again.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from provisioner.conductor.power import PowerService, get_service
from provisioner.db import get_engine
from provisioner.models import Event, Host
from provisioner.secret_store import mask
from provisioner.settings import Settings

log = logging.getLogger(__name__)

# Kinds that have no BMC to ask.
_SKIP_KINDS = {"manual"}
SLOT_S = 0.1  # the interval is cut into slots of this length; each host has one


def host_ids(settings: Settings) -> list[int]:
    with Session(get_engine(settings)) as s:
        rows = s.exec(select(Host.id, Host.bmc_kind).order_by(Host.id)).all()  # type: ignore[call-overload,arg-type]
    return [int(hid) for hid, kind in rows if kind not in _SKIP_KINDS and hid is not None]


def offset(host_id: int, interval: float) -> float:
    """Seconds after the tick at which this host is polled (stable: crc32, not hash())."""
    slots = max(1, int(interval / SLOT_S))
    return (zlib.crc32(str(host_id).encode()) % slots) * (interval / slots)


def sync_one(host_id: int, settings: Settings, service: PowerService | None = None) -> bool:
    """Poll one host; flag or clear ``bmc_reachable``. Returns True when the BMC answered."""
    svc = service or get_service(settings)
    with Session(get_engine(settings)) as s:
        host = s.get(Host, host_id)
        if host is None:
            return False
        was = host.bmc_reachable
    # One attempt only: the next round is the retry, and sync must not pile up.
    res = svc.get_power(host_id, actor="power-sync", retry=False)
    with Session(get_engine(settings)) as s:
        if res.ok and was is False:
            s.add(Event(host_id=host_id, event="bmc-reachable", message="BMC answers again", actor="power-sync"))
        elif not res.ok and was is not False:
            s.execute(update(Host).where(Host.id == host_id).values(bmc_reachable=False))  # type: ignore[arg-type]
            s.add(Event(host_id=host_id, event="bmc-unreachable",
                        message=mask(f"BMC stopped answering: {res.message}"), actor="power-sync"))
        s.commit()
    return res.ok


class Round:
    """One round's pool (``power_concurrency`` workers: the bound on calls in flight) and the
    peak it reached. The parts submit into it without waiting; ``finish()`` waits for the calls."""

    def __init__(self, settings: Settings, service: PowerService | None = None) -> None:
        self.settings, self.service = settings, service
        self.pool = ThreadPoolExecutor(max_workers=max(1, settings.power_concurrency), thread_name_prefix="prov-sync")
        self._lock = threading.Lock()
        self.in_flight = self.peak = 0

    def _one(self, hid: int) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            sync_one(hid, self.settings, self.service)
        except Exception:  # one host's bug must not end the round
            log.exception("power sync of host %s failed", hid)
        finally:
            with self._lock:
                self.in_flight -= 1

    def finish(self) -> int:
        self.pool.shutdown(wait=True)
        return self.peak


def run_part(rnd: Round, ids: list[int], tick: float, interval: float, part: int, parts: int,
             stop: threading.Event) -> dict[str, Any]:
    """Submit the hosts whose offset falls in part ``part`` of ``parts`` of the interval, each at
    ``tick + offset`` (wall clock), into the round's pool (at most ``power_concurrency`` calls in
    flight). A host whose time passed already (a late or resumed round) is submitted at once."""
    lo, hi = interval * part / parts, interval * (part + 1) / parts
    last = part == parts - 1
    mine = sorted((o, hid) for hid in ids if lo <= (o := offset(hid, interval)) < hi or (last and o >= hi))
    polled = 0
    for off, hid in mine:
        delay = tick + off - time.time()
        if delay > 0 and stop.wait(delay):
            break
        rnd.pool.submit(rnd._one, hid)
        polled += 1
    return {"polled": polled, "peak": rnd.peak}


def run_round(settings: Settings, stop: threading.Event, *, interval: float | None = None,
              service: PowerService | None = None, parts: int = 1) -> int:
    """One whole round from now, outside the engine (tests, benches); returns the number polled."""
    ids = host_ids(settings)
    span = settings.power_sync_interval if interval is None else interval
    tick = time.time()
    rnd = Round(settings, service)
    try:
        return sum(run_part(rnd, ids, tick, span, p, parts, stop)["polled"] for p in range(parts))
    finally:
        rnd.finish()
