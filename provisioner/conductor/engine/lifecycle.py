"""Starting and stopping DBOS, the system database, take-over of a dead executor's work."""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
from collections.abc import Callable
from typing import Any

from dbos import DBOS, DBOSClient
from sqlalchemy import update
from sqlmodel import Session, select

from provisioner import states as S
from provisioner.conductor.engine.registry import (
    APP_VERSION,
    INSTALL_QUEUE,
    TAKEN_OVER_KEY,
    TASK_QUEUE,
    WORKFLOW,
    _lock,
    _off_loop,
    _settings,
    _state,
    log,
)
from provisioner.conductor.engine.workflow import task_workflow  # noqa: F401  (registered before launch)
from provisioner.db import get_engine
from provisioner.models import Task, utcnow
from provisioner.settings import Settings, get_settings


def _import_workflows() -> None:
    """Every module whose import registers kinds, imported before launch: a recovered workflow of
    any kind must find its runner."""
    from provisioner.conductor import (  # noqa: F401
        configure,
        drift_config,
        guests,
        install,
        install_callbacks,
        rack,
        rack_power,
    )


# --------------------------------------------------------------------------- lifecycle
def system_database_url(settings: Settings) -> str:
    url = settings.db_url
    if url.startswith("sqlite"):
        return f"sqlite:///{settings.data_dir / 'dbos.sqlite'}"
    return url


def _sqlite_connector(url: str) -> Callable[[], sqlite3.Connection]:
    """Connections to the SQLite system database in WAL mode with synchronous=NORMAL, as prov.db's
    (db.py). DBOS's own default, a rollback journal with a sync at every commit, made each step
    cost two fsyncs: 200 tasks of 8 steps took 45 s instead of ~8 s (bench/engine.py)."""
    path = url.removeprefix("sqlite:///")

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: fsync at checkpoint
        return conn

    return connect


def _client_engine(url: str) -> Any:
    import sqlalchemy as sa

    return sa.create_engine(url, creator=_sqlite_connector(url), pool_size=4, max_overflow=4)


def _seed_queues(url: str, settings: Settings, engine_kwargs: dict[str, Any]) -> None:
    """Create the system database and our queue rows before launch: DBOS's queue thread lists the
    queues once at launch and then every 1 s, so a queue registered after launch on a new database
    waits ~1 s for its worker (every test's first task would)."""
    from dbos._serialization import DefaultSerializer
    from dbos._sys_db import SystemDatabase

    sys_db = SystemDatabase.create(system_database_url=url, engine_kwargs={"pool_size": 2, "max_overflow": 0,
                                                                           **engine_kwargs},
                                   engine=None, schema="dbos", serializer=DefaultSerializer(), executor_id=None,
                                   app_name="prov")
    try:
        sys_db.run_migrations()
        for name, cfg in _queue_config(settings).items():
            sys_db.upsert_queue(name=name, rate_limit_max=None, rate_limit_period_sec=None,
                                update_existing=True, **cfg)
    finally:
        sys_db.destroy()


def migrate_system_database(settings: Settings) -> None:
    """DBOS's system schema and our queue rows, made before any role process launches DBOS.

    ``prov serve`` calls this under its start-up lock (server.prepare): role processes starting
    together against one PostgreSQL otherwise each ran DBOS's migrations at once; two concurrent
    CREATE INDEX CONCURRENTLY left an invalid index ("left by a prior failed migration") and the
    next process's first enqueue waited ~30 s repairing it (seen in test_engine_pg.py's
    api + 2 conductors). Once the schema is current, each launch's own migration check is a no-op.
    """
    url = system_database_url(settings)
    _seed_queues(url, settings, {"creator": _sqlite_connector(url)} if url.startswith("sqlite") else {})


def _queue_config(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        INSTALL_QUEUE: {"concurrency": settings.install_concurrency, "worker_concurrency": None,
                        "polling_interval_sec": settings.engine_poll_s},
        TASK_QUEUE: {"concurrency": None, "worker_concurrency": settings.task_concurrency,
                     "polling_interval_sec": settings.engine_poll_s},
    }


def start(settings: Settings | None = None, *, executor: str | None = None) -> Callable[[], None]:
    """Launch DBOS for these settings; returns the stop callable. Already running on the same
    database: a no-op stop (the first starter owns it). On another database: restarted."""
    return _off_loop(lambda: _start(settings or get_settings(), executor))


def _start(settings: Settings, executor: str | None) -> Callable[[], None]:
    with _lock:
        if _state.settings is not None:
            if _state.url == settings.db_url:
                return lambda: None
            _stop()
        _import_workflows()
        url = system_database_url(settings)
        # An operator's fixed PROV_EXECUTOR_ID first (a restart resumes its own work), then the
        # cluster member id (cluster.claim_dead answers member ids: take_over gets those).
        ex = settings.executor_id or executor or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        sqlite = url.startswith("sqlite")
        engine_kwargs: dict[str, Any] = {"creator": _sqlite_connector(url)} if sqlite else {}
        _seed_queues(url, settings, engine_kwargs)
        if "conductor" not in settings.role_set:
            _state.client = DBOSClient(system_database_url=url, application_name="prov",
                                       system_database_engine=None if not sqlite else _client_engine(url))
            _state.settings, _state.executor_id, _state.url = settings, ex, settings.db_url
            return stop
        DBOS(config={
            "name": "prov", "system_database_url": url, "executor_id": ex, "application_version": APP_VERSION,
            "log_level": "WARNING",
            # The notification listener polls at this interval on SQLite, and destroy() waits for
            # it: 1 s (the default) made every stop cost 1 s.
            "notification_listener_polling_interval_sec": 0.1,
            # Every running workflow records its steps through this pool (max_overflow 0): on
            # SQLite a connection is a file handle; on PostgreSQL each conductor's share of the
            # server's max_connections, DBOS's default.
            "sys_db_pool_size": 2 * settings.task_concurrency if sqlite else 20,
            "db_engine_kwargs": engine_kwargs,
        })
        DBOS.launch()
        for name, cfg in _queue_config(settings).items():
            DBOS.register_queue(name, global_concurrency=cfg["concurrency"],
                                worker_concurrency=cfg["worker_concurrency"],
                                polling_interval_sec=cfg["polling_interval_sec"], on_conflict="always_update")
        _state.settings, _state.executor_id, _state.url = settings, ex, settings.db_url
    takeover = settings.engine_takeover_on_start
    if takeover is None:
        takeover = settings.db_url.startswith("sqlite")
    if takeover:
        try:
            others = _other_executors()
            if others:
                n = take_over(others)
                log.warning("took over %d task(s) of stopped conductor(s) %s", n, ", ".join(others))
            _fail_orphans()
        except Exception:
            log.exception("taking over the tasks of a previous conductor failed")
    return stop


def stop() -> None:
    """DBOS.destroy(): background threads stop; running workflows are abandoned (recovered later)."""
    _off_loop(_stop)


def _stop() -> None:
    with _lock:
        if _state.settings is None:
            return
        _state.settings = None
        if _state.client is not None:
            client, _state.client = _state.client, None
            client.destroy()
            return
        DBOS.destroy(workflow_completion_timeout_sec=0)


# --------------------------------------------------------------------------- take-over
def take_over(executor_ids: list[str]) -> int:
    """Run here what dead executors left pending: their Task rows' owner becomes this executor
    first (their writes fail from then on: fenced), then DBOS re-enqueues their pending
    workflows; each resumes at its step. Returns the number of tasks taken over. The caller
    (cluster membership) decides who is dead: taking over a live executor fences it."""
    return _off_loop(lambda: _take_over(executor_ids))


def _take_over(executor_ids: list[str]) -> int:
    ids = [e for e in executor_ids if e and e != _state.executor_id]
    if not ids:
        return 0
    n = 0
    with Session(get_engine(_settings())) as s:
        rows = s.exec(select(Task).where(Task.owner.in_(ids), Task.status.in_([S.TASK_PENDING, S.TASK_RUNNING]))).all()  # type: ignore[union-attr,attr-defined]
        for task in rows:
            # compare-and-set on the old owner: two survivors taking over the same dead one
            # move each row once; the workflow's reason ("controller X stopped") names the dead one
            n += s.execute(update(Task).where(Task.id == task.id, Task.owner == task.owner).values(  # type: ignore[arg-type]
                owner=_state.executor_id, result={**(task.result or {}), TAKEN_OVER_KEY: task.owner})).rowcount  # type: ignore[attr-defined]
        s.commit()
    DBOS._recover_pending_workflows(ids)
    return n


def _other_executors() -> list[str]:
    pending = DBOS.list_workflows(status=["PENDING"], name=WORKFLOW, load_input=False, load_output=False)
    return sorted({w.executor_id for w in pending if w.executor_id and w.executor_id != _state.executor_id})


def _fail_orphans() -> None:
    """Task rows left pending/running with no workflow behind them (written by a runner before the
    engine, or whose enqueue never landed): failed with the reason, as the old recover() did."""
    with Session(get_engine(_settings())) as s:
        stale = s.exec(select(Task).where(Task.status.in_([S.TASK_PENDING, S.TASK_RUNNING]))).all()  # type: ignore[attr-defined]
        for task in stale:
            wf = DBOS.get_workflow_status(f"task-{task.id}")
            if wf is not None and wf.status in ("PENDING", "ENQUEUED", "DELAYED"):
                continue
            task.status, task.finished_at = S.TASK_FAILED, utcnow()
            task.error = f"controller {task.owner} stopped while this task was {task.step or 'running'}"
            s.add(task)
        s.commit()


