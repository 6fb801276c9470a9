"""Power sync: a periodic poll of every host's power state.

Each round lists the hosts with a BMC and spreads their polls evenly over the
interval (host i is polled at ``start + i * interval / n``), so 1,000 BMCs are
never hit at once and UDP bursts do not cause the losses operators complain
about. A change of power state becomes a history line (the power service
writes it); a BMC that stops answering is flagged (``bmc_reachable=False`` and
a history line) and the flag is cleared, with a line, when it answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


def _host_ids(settings: Settings) -> list[int]:
    with Session(get_engine(settings)) as s:
        rows = s.exec(select(Host.id, Host.bmc_kind).order_by(Host.id)).all()  # type: ignore[call-overload,arg-type]
    return [int(hid) for hid, kind in rows if kind not in _SKIP_KINDS and hid is not None]


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


def run_round(settings: Settings, stop: threading.Event, *, interval: float | None = None,
              pool: ThreadPoolExecutor | None = None, service: PowerService | None = None) -> int:
    """One pass over all hosts spread over ``interval`` seconds; returns the number polled."""
    ids = _host_ids(settings)
    if not ids:
        return 0
    span = settings.power_sync_interval if interval is None else interval
    step = span / len(ids)
    start = time.monotonic()
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=max(1, min(len(ids), settings.power_concurrency)),
                                      thread_name_prefix="prov-sync")
    futures = []
    try:
        for i, hid in enumerate(ids):
            delay = start + i * step - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            futures.append(pool.submit(sync_one, hid, settings, service))
        for f in futures:
            try:
                f.result()
            except Exception:  # one host's bug must not end the sync loop
                log.exception("power sync of one host failed")
    finally:
        if own:
            pool.shutdown(wait=True)
    return len(futures)


def start(settings: Settings, *, service: PowerService | None = None) -> Callable[[], None]:
    """Start the periodic sync in a daemon thread; returns a callable that stops it."""
    stop = threading.Event()
    if not settings.power_sync_enabled:
        return stop.set

    def loop() -> None:
        with ThreadPoolExecutor(max_workers=max(1, settings.power_concurrency), thread_name_prefix="prov-sync") as p:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    run_round(settings, stop, pool=p, service=service)
                except Exception:
                    log.exception("power sync round failed")
                # a round with few hosts finishes early: wait out the rest of the interval
                stop.wait(max(0.0, settings.power_sync_interval - (time.monotonic() - t0)))

    thread = threading.Thread(target=loop, name="prov-power-sync", daemon=True)
    thread.start()

    def stop_fn() -> None:
        stop.set()
        thread.join(timeout=settings.power_call_timeout + 5)

    return stop_fn
