"""The workflow engine's own overhead vs the thread runner it replaced (issue 14, item 2).

Same run for each: N no-op tasks of 8 steps, all submitted at once, then waited for; each step
writes its progress (step name, percent) to the task row as the install's steps do. Variants:

* ``old``: the ThreadPoolExecutor runner as it was at the branch point (its source read from
  git, ``BASE`` below), 32 threads;
* ``dbos``: conductor/engine.py, each step a DBOS step, the ``tasks`` queue (32 per conductor),
  the system database in its own SQLite file (the default);
* ``dbos-shared``: the same with DBOS's tables inside prov.db, to show why they are not;
* ``--pg``: ``old`` and ``dbos`` again on a throw-away PostgreSQL (tests/support/pg.py).

Printed per variant: wall time, per-task latency (row created -> finished) min/median/max, the
process CPU per task, and the start/stop cost of the engine (tests start and stop it often).
Meanwhile a writer thread stands in for the API: one short write to prov.db every 10 ms; its
write latency p50/p99/max shows what sharing the SQLite writer lock with DBOS costs the API.

    PYTHONPATH=. .venv/bin/python bench/engine.py [-n 200] [--pg]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import update
from sqlmodel import Session, select

from provisioner import migrate
from provisioner import states as S
from provisioner.conductor import engine
from provisioner.conductor.tasks import TaskContext
from provisioner.db import get_engine
from provisioner.models import Host, Task, utcnow
from provisioner.settings import Settings

BASE = "fc60300"  # main when the engine branch was made: the last commit with the thread runner
STEPS = 8


def _old_runner_module() -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{BASE}:provisioner/conductor/tasks.py"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    mod = types.ModuleType("old_tasks")
    sys.modules["old_tasks"] = mod  # dataclasses look their module up
    exec(compile(src, "old_tasks.py", "exec"), mod.__dict__)
    return mod


def _old_body(ctx: Any) -> dict[str, Any]:
    for i in range(STEPS):
        ctx.progress(int(100 * i / STEPS), step=f"s{i}")
    return {"ok": True}


def _dbos_body(ctx: TaskContext) -> dict[str, Any]:
    for i in range(STEPS):
        engine.run_step(f"bench.s{i}", lambda i=i: ctx.progress(int(100 * i / STEPS), step=f"s{i}"))  # type: ignore[misc]
    return {"ok": True}


engine.register("bench-noop", _dbos_body)


def _settings(root: Path, name: str, url: str | None) -> Settings:
    s = Settings(data_dir=root / name, database_url=url, power_sync_enabled=False, tftp_enabled=False,
                 dhcp_enabled=False, log_json=False, log_level="WARNING", engine_poll_s=0.05)
    s.ensure_dirs()
    migrate.upgrade(s)
    return s


def _wait_all(settings: Settings, ids: list[int], timeout: float = 600) -> list[Task]:
    deadline = time.monotonic() + timeout
    while True:
        with Session(get_engine(settings)) as s:
            rows = list(s.exec(select(Task).where(Task.id.in_(ids))).all())  # type: ignore[union-attr]
        if len(rows) == len(ids) and all(r.status in S.TASK_DONE for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError("tasks did not finish")
        time.sleep(0.05)


def _report(name: str, n: int, wall: float, cpu: float, rows: list[Task]) -> dict[str, Any]:
    bad = [r for r in rows if r.status != S.TASK_SUCCEEDED]
    lat = sorted(((r.finished_at or r.created_at) - r.created_at).total_seconds() * 1000 for r in rows)
    out = {"variant": name, "tasks": n, "wall_s": wall, "per_task_ms": 1000 * wall / n, "lat_min": lat[0],
           "lat_med": statistics.median(lat), "lat_max": lat[-1], "cpu_ms": 1000 * cpu / n, "failed": len(bad)}
    print(f"{name:<13} {n} tasks x {STEPS} steps: wall {wall:6.2f} s ({out['per_task_ms']:5.1f} ms/task)  "
          f"latency min/median/max {lat[0]:7.0f} / {out['lat_med']:7.0f} / {lat[-1]:7.0f} ms  "
          f"CPU {out['cpu_ms']:5.1f} ms/task" + (f"  FAILED {len(bad)}: {bad[0].error}" if bad else ""),
          flush=True)
    return out


class Writer:
    """One short write transaction to prov.db every 10 ms (an API's writes), timed."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.lat = settings, []  # type: ignore[var-annotated]
        self.stop_ev = threading.Event()
        with Session(get_engine(settings)) as s:
            h = Host(name="bench-writer")
            s.add(h)
            s.commit()
            self.host_id = h.id
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop_ev.wait(0.01):
            t0 = time.perf_counter()
            with Session(get_engine(self.settings)) as s:
                s.execute(update(Host).where(Host.id == self.host_id).values(updated_at=utcnow()))  # type: ignore[arg-type]
                s.commit()
            self.lat.append(1000 * (time.perf_counter() - t0))

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_ev.set()
        self.thread.join()

    def summary(self) -> str:
        lat = sorted(self.lat) or [0.0]
        return (f"API-like writes to the app database: p50 {statistics.median(lat):.1f} ms, "
                f"p99 {lat[int(0.99 * (len(lat) - 1))]:.1f} ms, max {lat[-1]:.0f} ms ({len(lat)} writes)")


def run_old(settings: Settings, n: int) -> dict[str, Any]:
    old = _old_runner_module()
    runner = old.TaskRunner(settings)
    try:
        with Writer(settings) as w:
            cpu0, t0 = time.process_time(), time.perf_counter()
            ids = [runner.submit("bench-old", _old_body).id for _ in range(n)]
            rows = _wait_all(settings, ids)
            out = _report("old", n, time.perf_counter() - t0, time.process_time() - cpu0, rows)
        print("              " + w.summary(), flush=True)
        return out
    finally:
        runner.shutdown(wait=True)


def run_dbos(settings: Settings, n: int, name: str = "dbos") -> dict[str, Any]:
    engine.start(settings)
    try:
        with Writer(settings) as w:
            cpu0, t0 = time.process_time(), time.perf_counter()
            ids = [engine.submit("bench-noop", settings=settings).id or 0 for _ in range(n)]
            rows = _wait_all(settings, ids)
            out = _report(name, n, time.perf_counter() - t0, time.process_time() - cpu0, rows)
        print("              " + w.summary(), flush=True)
        return out
    finally:
        engine.stop()


def start_stop_cost(root: Path, cycles: int = 5) -> None:
    starts, stops = [], []
    for i in range(cycles):
        s = _settings(root, f"cycle{i}", None)
        t0 = time.perf_counter()
        engine.start(s)
        starts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.stop()
        stops.append(time.perf_counter() - t0)
    print(f"engine start (fresh SQLite system database) median {1000 * statistics.median(starts):.0f} ms, "
          f"stop median {1000 * statistics.median(stops):.0f} ms over {cycles} cycles", flush=True)


def _shared(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """DBOS's tables inside prov.db instead of dbos.sqlite."""
    original = engine.lifecycle.system_database_url
    engine.lifecycle.system_database_url = lambda settings: settings.db_url  # type: ignore[assignment]
    try:
        return fn()
    finally:
        engine.lifecycle.system_database_url = original  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--pg", action="store_true", help="also on a throw-away PostgreSQL server")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prov-bench-engine-"))
    start_stop_cost(root)
    results = [run_old(_settings(root, "old", None), args.n), run_dbos(_settings(root, "dbos", None), args.n)]
    results.append(_shared(lambda: run_dbos(_settings(root, "shared", None), args.n, "dbos-shared")))
    if args.pg:
        from tests.support import pg

        with pg.running() as server:
            results.append(run_old(_settings(root, "pg-old", server.url(server.create_database())), args.n))
            results[-1]["variant"] = "pg-old"
            results.append(run_dbos(_settings(root, "pg-dbos", server.url(server.create_database())), args.n,
                                    "pg-dbos"))
    by = {r["variant"]: r for r in results}
    for old, new in (("old", "dbos"), ("old", "dbos-shared"), ("pg-old", "pg-dbos")):
        if old in by and new in by:
            o, w = by[old], by[new]
            print(f"{new} vs {old}: wall x{w['wall_s'] / o['wall_s']:.2f}, median latency "
                  f"x{w['lat_med'] / max(o['lat_med'], 0.001):.2f}, CPU/task +{w['cpu_ms'] - o['cpu_ms']:.1f} ms")


if __name__ == "__main__":
    main()
