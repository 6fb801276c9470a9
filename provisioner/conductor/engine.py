"""The workflow engine: every long action is a DBOS Transact workflow (issue 14, item 2).

One code path on SQLite (embedded default) and PostgreSQL (scale-out). Our ``task`` row stays
the domain view (the API and CLI read it unchanged); DBOS's system database holds the durable
execution: the queue, each workflow's status and every checkpointed step.

* System database: on PostgreSQL the application's own database (DBOS's ``dbos`` schema), so a
  conductor needs one URL. On SQLite a separate file next to ``prov.db``: SQLite has one writer
  per file, and DBOS writes on every queue poll and step; sharing prov.db would put those writes
  in the API's and task rows' lock queue (bench/engine.py measures both).
* ``submit()`` writes the Task row, then enqueues the workflow ``prov.task(task_id)`` with
  workflow id ``task-<id>``. A kind that owns its host (install, configure) is enqueued with
  ``deduplication_id=host-<id>``: while one such workflow of a host is queued or running, a
  second is refused with 409 (the lifecycle compare-and-set refuses most of them first).
* Queues: ``install`` (global cap ``install_concurrency`` across every conductor) and ``tasks``
  (per-conductor cap ``task_concurrency``, what the old runner's 32 threads gave). A per-rack cap
  through DBOS partitioned queues is not used: DBOS refuses deduplication on a partitioned queue
  (3.4.0 ``register_queue`` docstring), and one-workflow-per-host matters more; the rack task
  keeps its own cap (conductor/rack.py).
* Resume: DBOS re-executes a recovered workflow from the top and skips each step it recorded;
  the install's named steps are DBOS steps (``run_step``), so it resumes in its step. A kind
  whose runner is not resumable is failed with the old "controller stopped" reason instead.
* Take-over: ``take_over(executor_ids)`` moves a dead executor's Task rows to this one (which
  fences it: see TaskContext.fenced_update) and has DBOS re-enqueue its pending workflows.
* Cancel: ``cancel()`` flags the row (any process); the runner's next progress() raises
  TaskCancelled and the workflow cleans up. A workflow not begun yet is also cancelled in DBOS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dbos import DBOS, SetEnqueueOptions, SetWorkflowID
from dbos._error import DBOSQueueDeduplicatedError, DBOSWorkflowCancelledError
from sqlalchemy import update
from sqlmodel import Session, select

from provisioner import states as S
from provisioner.conductor.tasks import CANCEL_KEY, Fenced, Runner, TaskCancelled, TaskContext
from provisioner.db import get_engine
from provisioner.errors import Conflict, ProvError
from provisioner.models import Task, utcnow
from provisioner.secret_store import decrypt, encrypt, mask
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

INSTALL_QUEUE = "install"
TASK_QUEUE = "tasks"
WORKFLOW = "prov.task"
TAKEN_OVER_KEY = "taken_over_from"  # Task.result: the executor a task was taken over from
# DBOS recovers only workflows of its own application version; every conductor of one release
# must share it (DBOS would otherwise hash the registered code, which differs per import order).
APP_VERSION = "prov-1"


@dataclass(frozen=True)
class Kind:
    runner: Runner
    queue: str = TASK_QUEUE
    exclusive: bool = False  # one workflow of this kind per host at a time (deduplication)
    resumable: bool = False  # re-run after a crash (it checkpoints its own steps) instead of failed


KINDS: dict[str, Kind] = {}


def register(kind: str, runner: Runner, *, queue: str = TASK_QUEUE, exclusive: bool = False,
             resumable: bool = False) -> None:
    """kind -> a named module-level runner (params live in the Task row: no closure, no partial)."""
    KINDS[kind] = Kind(runner, queue, exclusive, resumable)


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
class _State:
    settings: Settings | None = None
    executor_id: str = ""
    url: str = ""


_state = _State()
_lock = threading.RLock()


def system_database_url(settings: Settings) -> str:
    url = settings.db_url
    if url.startswith("sqlite"):
        return f"sqlite:///{settings.data_dir / 'dbos.sqlite'}"
    return url


def executor_id() -> str:
    return _state.executor_id


def running() -> bool:
    return _state.settings is not None


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


def _queue_config(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        INSTALL_QUEUE: {"concurrency": settings.install_concurrency, "worker_concurrency": None,
                        "polling_interval_sec": settings.engine_poll_s},
        TASK_QUEUE: {"concurrency": None, "worker_concurrency": settings.task_concurrency,
                     "polling_interval_sec": settings.engine_poll_s},
    }


_R = TypeVar("_R")


def _off_loop(fn: Callable[[], _R]) -> _R:
    """``fn()``, in a helper thread when this thread runs an event loop: DBOS refuses its
    synchronous API there (``check_async``), and the API's lifespan and async routes run there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    out: list[_R] = []
    err: list[BaseException] = []

    def call() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            err.append(exc)

    t = threading.Thread(target=call, name="prov-engine-call")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


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
        ex = executor or settings.executor_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        sqlite = url.startswith("sqlite")
        engine_kwargs: dict[str, Any] = {"creator": _sqlite_connector(url)} if sqlite else {}
        _seed_queues(url, settings, engine_kwargs)
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
        DBOS.destroy(workflow_completion_timeout_sec=0)


def _settings() -> Settings:
    if _state.settings is None:
        raise RuntimeError("the workflow engine is not started (engine.start)")
    return _state.settings


# --------------------------------------------------------------------------- submit / cancel / wait
def submit(kind: str, *, host_id: int | None = None, rack_id: int | None = None,
           params: dict[str, Any] | None = None, private: dict[str, Any] | None = None,
           session: Session | None = None, settings: Settings | None = None) -> Task:
    """Write the Task row, then enqueue its workflow. ``private``: inputs that must not show in the
    tasks API (a guest's seed credentials): encrypted into the workflow's input instead."""
    return _off_loop(lambda: _submit(kind, host_id, rack_id, params, private, session, settings))


def _submit(kind: str, host_id: int | None, rack_id: int | None, params: dict[str, Any] | None,
            private: dict[str, Any] | None, session: Session | None, settings: Settings | None) -> Task:
    spec = KINDS.get(kind)
    if spec is None:
        raise ValueError(f"no workflow registered for task kind {kind!r}")
    if not running():
        start(settings)
    task = Task(kind=kind, host_id=host_id, rack_id=rack_id, params=params or {}, owner=_state.executor_id)
    own = session is None
    s = session or Session(get_engine(_settings()), expire_on_commit=False)
    try:
        s.add(task)
        s.commit()
        s.refresh(task)
    finally:
        if own:
            s.close()
    assert task.id is not None
    secret = encrypt(json.dumps(private), _settings(), remember=False) if private else None
    wid = f"task-{task.id}"
    try:
        if DBOS.get_workflow_status(wid) is not None:
            # Left from an earlier application database (restored, or deleted on SQLite while
            # dbos.sqlite stayed): the row it ran for is gone. Enqueuing under its id would return
            # that finished workflow and this task would never run.
            log.warning("workflow %s belongs to a task row that no longer exists: replaced", wid)
            DBOS.delete_workflow(wid)
        with SetWorkflowID(wid):
            if spec.exclusive and host_id is not None:
                with SetEnqueueOptions(deduplication_id=f"host-{host_id}"):
                    DBOS.enqueue_workflow(spec.queue, task_workflow, task.id, secret)
            else:
                DBOS.enqueue_workflow(spec.queue, task_workflow, task.id, secret)
    except DBOSQueueDeduplicatedError as exc:
        _end(task.id, S.TASK_FAILED, error="another workflow of this host is queued or running")
        raise Conflict(reason=f"host {host_id} already has a {kind} workflow queued or running") from exc
    except Exception as exc:
        _end(task.id, S.TASK_FAILED, error=mask(f"could not queue the workflow: {exc}"))
        raise
    return task


def cancel(task_id: int, settings: Settings | None = None) -> bool:
    """Ask a task to stop (from any process). False when it is already finished."""
    return _off_loop(lambda: _cancel(task_id, settings))


def _cancel(task_id: int, settings: Settings | None) -> bool:
    settings = settings or _state.settings or get_settings()
    with Session(get_engine(settings)) as s:
        task = s.get(Task, task_id)
        if task is None or task.status in S.TASK_DONE:
            return False
        s.execute(update(Task).where(Task.id == task_id).values(  # type: ignore[arg-type]
            result={**(task.result or {}), CANCEL_KEY: True}))
        # Not begun: it never reaches a progress() that would see the flag; end it here and
        # take it off the queue. (A running one is not cancelled in DBOS: DBOS raises
        # DBOSWorkflowCancelledError, a BaseException, at the next step, skipping the workflow's
        # own clean-up, e.g. the install's token revocation.)
        ended = s.execute(update(Task).where(Task.id == task_id, Task.status == S.TASK_PENDING).values(  # type: ignore[arg-type]
            status=S.TASK_CANCELLED, error="cancelled", finished_at=utcnow())).rowcount  # type: ignore[attr-defined]
        s.commit()
    if ended and running():
        try:
            DBOS.cancel_workflow(f"task-{task_id}")
        except Exception:
            log.exception("task %s: cancelling its queued workflow failed", task_id)
    return True


def wait(task_id: int, timeout: float | None = None) -> Task:
    """Until the task row is finished (tests, benches)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with Session(get_engine(_settings())) as s:
            task = s.get(Task, task_id)
            if task is None or task.status in S.TASK_DONE:
                if task is None:
                    raise LookupError(f"task {task_id} vanished")
                return task
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {task.status}")
        time.sleep(0.02)


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


# --------------------------------------------------------------------------- the workflow
@DBOS.workflow(name=WORKFLOW)
def task_workflow(task_id: int, secret: str | None = None) -> None:
    """Every task kind: claim the row, run the kind's runner, end the row with the outcome."""
    settings = _settings()
    me = _state.executor_id
    claimed = _claim(task_id, me)
    if claimed is None:
        return  # finished or cancelled before it began (or by a previous execution)
    task, resumed, prev_owner = claimed
    spec = KINDS.get(task.kind)
    private = json.loads(decrypt(secret, settings, remember=False)) if secret else {}
    ctx = TaskContext(task_id, task.kind, task.host_id, task.rack_id, dict(task.params), settings, owner=me,
                      resumed=resumed, private=private)
    if spec is None:
        _end(task_id, S.TASK_FAILED, owner=me, error=f"no workflow registered for kind {task.kind!r}")
        return
    if resumed and not spec.resumable:
        _end(task_id, S.TASK_FAILED, owner=me,
             error=f"controller {prev_owner} stopped while this task was {task.step or 'running'}")
        return
    try:
        result = spec.runner(ctx)
    except Fenced as exc:
        log.warning("task %s: %s", task_id, exc.message)  # the new owner ends the row, not us
    except TaskCancelled:
        _end(task_id, S.TASK_CANCELLED, owner=me, error="cancelled")
    except DBOSWorkflowCancelledError:
        _end(task_id, S.TASK_CANCELLED, owner=me, error="cancelled")
        raise
    except ProvError as exc:
        _end(task_id, S.TASK_FAILED, owner=me, error=mask(exc.message))
    except Exception as exc:  # a bug must still end the task, with the reason
        log.error("task %s (%s) crashed: %s", task_id, task.kind, mask(traceback.format_exc()))
        _end(task_id, S.TASK_FAILED, owner=me, error=mask(f"internal error: {exc.__class__.__name__}: {exc}"))
    else:
        _end(task_id, S.TASK_SUCCEEDED, owner=me, result=result or None)


def _claim(task_id: int, me: str) -> tuple[Task, bool, str | None] | None:
    """This execution owns the row from now on. Returns (row, resumed, previous owner); None when
    the task is already finished. Not a DBOS step on purpose: a re-execution must claim again."""
    with Session(get_engine(_settings()), expire_on_commit=False) as s:
        task = s.get(Task, task_id)
        if task is None or task.status in S.TASK_DONE:
            return None
        resumed, prev = task.status == S.TASK_RUNNING, (task.result or {}).get(TAKEN_OVER_KEY) or task.owner
        values: dict[str, Any] = {"owner": me, "status": S.TASK_RUNNING, "heartbeat_at": utcnow()}
        if task.started_at is None:
            values["started_at"] = utcnow()
        ok = s.execute(update(Task).where(Task.id == task_id, Task.status == task.status).values(**values)  # type: ignore[arg-type]
                       ).rowcount  # type: ignore[attr-defined]
        s.commit()
        if not ok:
            return None  # cancelled in between
        s.refresh(task)
        return task, resumed, prev


def _end(task_id: int, status: str, *, owner: str | None = None, error: str | None = None,
         result: dict[str, Any] | None = None) -> None:
    """The task's outcome; with ``owner``, only while this executor still owns the row."""
    with Session(get_engine(_state.settings or get_settings())) as s:
        task = s.get(Task, task_id)
        if task is None:
            return
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if status == S.TASK_SUCCEEDED:
            values["progress"] = 100
        if result:
            values["result"] = {**(task.result or {}), **result}
        stmt = update(Task).where(Task.id == task_id)  # type: ignore[arg-type]
        if owner is not None:
            stmt = stmt.where(Task.owner == owner)  # type: ignore[arg-type]
        s.execute(stmt.values(**values))
        s.commit()


# --------------------------------------------------------------------------- steps
class StepFailed(ProvError):
    """A checkpointed step's recorded failure, raised again where the step was called."""

    code = "step_failed"
    template = "{reason}"


def run_step(name: str, fn: Callable[[], None]) -> None:
    """``fn()`` as a DBOS step named ``name``: run once, checkpointed; a re-executed workflow skips
    it when it finished before. Its outcome is recorded as a plain value (a ProvError does not
    pickle: its __init__ takes keywords), so a replay raises the same error again."""
    out = DBOS.run_step({"name": name}, _checkpointed, fn)
    if not out:
        return
    if out.get("fenced"):
        raise Fenced(out["fenced"])
    if out.get("cancelled"):
        raise TaskCancelled(task_id=out["cancelled"])
    raise StepFailed(reason=out.get("message") or "step failed")


def _checkpointed(fn: Callable[[], None]) -> dict[str, Any] | None:
    try:
        fn()
    except Fenced as exc:
        return {"fenced": exc.message}
    except TaskCancelled as exc:
        return {"cancelled": exc.details.get("task_id", 0)}
    except ProvError as exc:
        return {"code": exc.code, "message": exc.message}
    except Exception as exc:
        log.error("step crashed: %s", mask(traceback.format_exc()))
        return {"code": "internal", "message": mask(f"internal error: {exc.__class__.__name__}: {exc}")}
    return None
