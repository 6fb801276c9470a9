"""Periodic jobs once per cluster: DBOS scheduled workflows (issue 14, item 4).

Power sync, the install/wait-state deadlines (conductor/timeouts.py) and the GitOps drift check
(conductor/drift_check.py) are DBOS *schedules* kept in the system database, one per job
(``prov-power-sync``, ``prov-timeouts``, ``prov-drift-check``), all running the one workflow
``prov.periodic``. Every conductor's DBOS scheduler thread fires every tick, but the workflow id
is derived from the schedule name and the tick time (``sched-<name>-<iso time>``, inserted with
ON CONFLICT DO NOTHING), so a tick is one workflow cluster-wide; whichever conductor dequeues it
runs it. Same code on SQLite (one process) and PostgreSQL (any number of conductors).

* Each job has its own queue with a global concurrency of 1: a round that runs long (BMCs timing
  out) delays the next tick instead of overlapping it, and a tick older than one interval when it
  starts (after an outage, a backlog) is skipped, not run late.
* Intervals become cron expressions (``cron_for``): seconds that divide 60, minutes that divide
  60, hours that divide 24; another interval is rounded down to the nearest such one (logged).
* ``apply(settings)`` makes the stored schedules match this conductor's settings (created,
  replaced when the interval changed, deleted when the job is off). Conductors of one cluster
  should share these settings: the last one started wins.
* Power sync spreads its BMCs over the interval: host ``h`` is polled at ``tick + slot(h)``,
  ``slot = crc32(h) mod (interval / 0.1 s)`` (stable across rounds and processes), with at most
  ``power_concurrency`` calls in flight; the round is cut into ``POWER_PARTS`` checkpointed
  steps, so a conductor that takes over a round half done resumes at its part.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dbos import DBOS
from dbos._error import DBOSException

from provisioner.conductor.engine.registry import _off_loop, _settings, _state
from provisioner.settings import Settings

log = logging.getLogger("provisioner.conductor.engine.schedules")

WORKFLOW = "prov.periodic"
POWER_PARTS = 10  # checkpoints per power-sync round
# A pending task row this old with no workflow lost its enqueue (its API worker was killed in
# between): failed by the timeouts job (engine.lifecycle.fail_stale_orphans). A submit commits
# the row and enqueues within milliseconds; seconds on a loaded machine.
ORPHAN_GRACE_S = 10.0
_stopping = threading.Event()  # set by engine.stop(): a sleeping round ends


@dataclass(frozen=True)
class Job:
    name: str
    interval: Callable[[Settings], float]  # 0 or less: off
    run: Callable[[Settings, datetime, float], dict[str, Any]]

    @property
    def schedule(self) -> str:
        return f"prov-{self.name}"

    @property
    def queue(self) -> str:
        return f"periodic-{self.name}"


def _power(settings: Settings, tick: datetime, interval: float) -> dict[str, Any]:
    from provisioner.conductor import power_sync

    ids = power_sync.host_ids(settings)
    rnd = power_sync.Round(settings)
    polled = 0
    try:
        for part in range(POWER_PARTS):
            # one checkpoint per part (its hosts submitted): a re-executed round (take-over) skips
            # the parts already done; the calls of a part run on while the next part waits
            out = DBOS.run_step({"name": f"power-sync-{part}"}, power_sync.run_part, rnd, ids, tick.timestamp(),
                                interval, part, POWER_PARTS, _stopping)
            polled += out["polled"]
    finally:
        peak = rnd.finish()
    return {"hosts": len(ids), "polled": polled, "peak_in_flight": peak}


def _timeouts(settings: Settings, tick: datetime, interval: float) -> dict[str, Any]:
    from provisioner.conductor import timeouts
    from provisioner.conductor.engine.lifecycle import fail_stale_orphans

    moved = DBOS.run_step({"name": "timeouts"}, timeouts.check_once, settings)
    orphans = DBOS.run_step({"name": "orphans"}, fail_stale_orphans, ORPHAN_GRACE_S)
    return {"moved": moved, "orphans": orphans}


def _drift(settings: Settings, tick: datetime, interval: float) -> dict[str, Any]:
    from provisioner.conductor import drift_check

    def once() -> dict[str, Any]:
        res = drift_check.check_once(settings)
        return {"drift": len(res.drift) if res else None}

    out: dict[str, Any] = DBOS.run_step({"name": "drift-check"}, once)
    return out


JOBS: dict[str, Job] = {j.name: j for j in (
    Job("power-sync", lambda s: s.power_sync_interval if s.power_sync_enabled else 0.0, _power),
    Job("timeouts", lambda s: s.timeout_check_interval, _timeouts),
    Job("drift-check", lambda s: s.drift_check_interval, _drift),
)}


# --------------------------------------------------------------------------- cron
def _divisor_at_most(n: int, of: int) -> int:
    return max(d for d in range(1, of + 1) if of % d == 0 and d <= max(1, n))


def cron_for(interval: float) -> tuple[str, float]:
    """(6-field cron expression, the interval it really gives) for ``interval`` seconds."""
    s = max(1, int(interval))
    if s < 60:
        d = _divisor_at_most(s, 60)
        return ("* * * * * *" if d == 1 else f"*/{d} * * * * *"), float(d)
    if s < 3600:
        d = _divisor_at_most(s // 60, 60)
        return ("0 * * * * *" if d == 1 else f"0 */{d} * * * *"), float(d * 60)
    d = _divisor_at_most(s // 3600, 24)
    return ("0 0 * * * *" if d == 1 else f"0 0 */{d} * * *"), float(d * 3600)


def queue_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """One queue per job, one run at a time cluster-wide (engine/lifecycle seeds them)."""
    return {j.queue: {"concurrency": 1, "worker_concurrency": None, "polling_interval_sec": 0.5}
            for j in JOBS.values()}


# --------------------------------------------------------------------------- the workflow
@DBOS.workflow(name=WORKFLOW)
def periodic_workflow(scheduled_at: datetime, context: dict[str, Any]) -> dict[str, Any]:
    """One tick of one job, run by one conductor of the cluster."""
    job = JOBS.get(str(context.get("job")))
    interval = float(context.get("interval") or 0)
    if job is None:
        return {"skipped": f"unknown job {context.get('job')!r}"}
    settings = _settings()
    tick = scheduled_at if scheduled_at.tzinfo else scheduled_at.replace(tzinfo=UTC)
    late = time.time() - tick.timestamp()
    if interval and late > interval + 5:
        log.warning("periodic %s: tick %s skipped, %.0f s late (the next one runs)", job.name, tick.isoformat(), late)
        return {"skipped": "late", "late_s": round(late, 1)}
    t0 = time.monotonic()
    out = job.run(settings, tick, interval)
    out.update(job=job.name, tick=tick.isoformat(), executor=_state.executor_id,
               seconds=round(time.monotonic() - t0, 3))
    # one line per tick run, cluster-wide (tests/integration/install/test_periodic_pg.py counts them)
    log.warning("periodic run %s tick %s by %s: %s", job.name, tick.isoformat(), _state.executor_id,
                {k: v for k, v in out.items() if k not in ("job", "tick", "executor")})
    return out


# --------------------------------------------------------------------------- apply
def apply(settings: Settings) -> dict[str, str | None]:
    """Make the stored schedules match ``settings`` (DBOS launched here). Returns name -> cron."""
    return _off_loop(lambda: _apply(settings))


def _apply(settings: Settings) -> dict[str, str | None]:
    _stopping.clear()
    out: dict[str, str | None] = {}
    for job in JOBS.values():
        interval = job.interval(settings)
        existing = DBOS.get_schedule(job.schedule)
        if interval <= 0:
            if existing is not None:
                DBOS.delete_schedule(job.schedule)
            out[job.schedule] = None
            continue
        cron, real = cron_for(interval)
        if abs(real - interval) > 1e-6:
            log.info("periodic %s: interval %g s runs every %g s (%s)", job.name, interval, real, cron)
        context = {"job": job.name, "interval": real}
        out[job.schedule] = cron
        if (existing is not None and existing["schedule"] == cron and existing["context"] == context
                and existing.get("queue_name") == job.queue and existing.get("status", "ACTIVE") == "ACTIVE"):
            continue
        if existing is not None:
            DBOS.delete_schedule(job.schedule)
        try:
            DBOS.create_schedule(schedule_name=job.schedule, workflow_fn=periodic_workflow,  # type: ignore[arg-type]
                                 schedule=cron,
                                 context=context, queue_name=job.queue)
        except DBOSException as exc:
            if DBOS.get_schedule(job.schedule) is None:
                raise
            log.info("periodic %s: created by another conductor meanwhile (%s)", job.name, exc)
    return out


def stop() -> None:
    """A round sleeping towards its next slot ends (engine.stop)."""
    _stopping.set()
