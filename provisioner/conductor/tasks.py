"""Background tasks: persisted in the ``task`` table, run on a thread pool.

Every long action (power on a rack, install, configure) is a Task row. The row
is written before the work starts and after each step, so a controller that
is killed can tell, on restart, which tasks were cut off (``recover()``): they
are failed with a clear reason (or resumed by their workflow, which owns that
decision) instead of staying "running" forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, select

from provisioner import states as S
from provisioner.db import get_engine
from provisioner.errors import ProvError
from provisioner.models import Event, Task, utcnow
from provisioner.secret_store import mask
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

OWNER = f"{socket.gethostname()}:{os.getpid()}"

Runner = Callable[["TaskContext"], dict[str, Any] | None]


# Heartbeats skipped in a row before a database outage is treated as one: with a 1 s beat, a
# minute; the state deadline (timeout checker) bounds the wait anyway.
MAX_SKIPPED_BEATS = 60
_T = TypeVar("_T")


def is_transient(exc: BaseException) -> bool:
    """A database error that clears by itself: a pool wait that timed out, SQLite's "database is
    locked" after its busy timeout, a PostgreSQL connection that dropped."""
    if isinstance(exc, (PoolTimeout, TimeoutError)):
        return True
    if isinstance(exc, OperationalError):
        return True  # locked/busy, or the server went away: all worth another try
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_transient(fn: Callable[[], _T], *, attempts: int = 4, backoff: float = 0.25) -> _T:
    """``fn()``, tried again on a transient database error (:func:`is_transient`) up to
    ``attempts`` times in all, waiting 0.25, 0.5, 1 s... between tries; then the error is raised.
    A tiny bounded loop: no retry library is a dependency."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            log.info("database busy (%s), trying again (%d/%d)", exc.__class__.__name__, attempt, attempts)
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class TaskCancelled(ProvError):
    code = "task_cancelled"
    http_status = 409
    template = "task {task_id} was cancelled"


@dataclass
class TaskContext:
    """What a task's runner gets: its ids, params, and ways to report progress."""

    task_id: int
    kind: str
    host_id: int | None
    rack_id: int | None
    params: dict[str, Any]
    settings: Settings
    cancel_event: threading.Event = field(default_factory=threading.Event)
    _skipped_beats: int = field(default=0, repr=False)

    def session(self) -> Session:
        return Session(get_engine(self.settings), expire_on_commit=False)

    def progress(self, pct: int | None = None, step: str | None = None, result: dict[str, Any] | None = None) -> None:
        """Record progress (and a heartbeat); raises TaskCancelled once the task was cancelled.

        A transient database error (pool timeout, "database is locked") must not kill the
        workflow (issue 18: installs crashed in their wait loop's heartbeat): a bare heartbeat is
        skipped and tried again next beat (up to MAX_SKIPPED_BEATS in a row); a write that
        carries a step or a result, which a resumed task relies on, is retried with backoff.
        """
        beat_only = step is None and not result
        try:
            retry_transient(lambda: self._write_progress(pct, step, result), attempts=1 if beat_only else 4)
        except Exception as exc:
            if not (beat_only and is_transient(exc)):
                raise
            self._skipped_beats += 1
            if self._skipped_beats > MAX_SKIPPED_BEATS:
                raise
            log.warning("task %s: heartbeat skipped (%d in a row), database busy: %s", self.task_id,
                        self._skipped_beats, exc.__class__.__name__)
        else:
            self._skipped_beats = 0
        if self.cancel_event.is_set():
            raise TaskCancelled(task_id=self.task_id)

    def _write_progress(self, pct: int | None, step: str | None, result: dict[str, Any] | None) -> None:
        with self.session() as s:
            task = s.get(Task, self.task_id)
            if task is None:
                return
            if pct is not None:
                task.progress = max(0, min(100, pct))
            if step is not None:
                task.step = step
            if result:
                task.result = {**(task.result or {}), **result}
            task.heartbeat_at = utcnow()
            s.add(task)
            s.commit()

    def history(
        self, message: str, *, event: str = "note", host_id: int | None = None, actor: str = "conductor"
    ) -> None:
        """A host history line that does not change state (e.g. an Ansible task result)."""
        hid = host_id if host_id is not None else self.host_id
        if hid is None:
            return
        with self.session() as s:
            s.add(Event(host_id=hid, event=event, message=mask(message), actor=actor, task_id=self.task_id))
            s.commit()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


class TaskRunner:
    def __init__(self, settings: Settings | None = None, workers: int = 32) -> None:
        self.settings = settings or get_settings()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prov-task")
        self._cancel: dict[int, threading.Event] = {}
        self._futures: dict[int, Future[None]] = {}
        self._lock = threading.Lock()

    def submit(
        self,
        kind: str,
        runner: Runner,
        *,
        host_id: int | None = None,
        rack_id: int | None = None,
        params: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> Task:
        task = Task(kind=kind, host_id=host_id, rack_id=rack_id, params=params or {}, owner=OWNER)
        own = session is None
        s = session or Session(get_engine(self.settings), expire_on_commit=False)
        try:
            s.add(task)
            s.commit()
            s.refresh(task)
        finally:
            if own:
                s.close()
        assert task.id is not None
        ctx = TaskContext(task.id, kind, host_id, rack_id, dict(params or {}), self.settings)
        with self._lock:
            self._cancel[task.id] = ctx.cancel_event
            self._futures[task.id] = self._pool.submit(self._run, ctx, runner)
        return task

    def _set(self, task_id: int, **values: Any) -> None:
        with Session(get_engine(self.settings)) as s:
            task = s.get(Task, task_id)
            if task is None:
                return
            for k, v in values.items():
                setattr(task, k, v)
            s.add(task)
            s.commit()

    def _run(self, ctx: TaskContext, runner: Runner) -> None:
        self._set(ctx.task_id, status=S.TASK_RUNNING, started_at=utcnow(), heartbeat_at=utcnow())
        try:
            result = runner(ctx)
        except TaskCancelled:
            self._set(ctx.task_id, status=S.TASK_CANCELLED, finished_at=utcnow(), error="cancelled")
        except ProvError as exc:
            self._set(ctx.task_id, status=S.TASK_FAILED, finished_at=utcnow(), error=mask(exc.message))
        except Exception as exc:  # a bug must still end the task, with the reason
            log.error("task %s (%s) crashed: %s", ctx.task_id, ctx.kind, mask(traceback.format_exc()))
            self._set(ctx.task_id, status=S.TASK_FAILED, finished_at=utcnow(),
                      error=mask(f"internal error: {exc.__class__.__name__}: {exc}"))
        else:
            values: dict[str, Any] = {"status": S.TASK_SUCCEEDED, "finished_at": utcnow(), "progress": 100}
            if result:
                with Session(get_engine(self.settings)) as s:
                    task = s.get(Task, ctx.task_id)
                    values["result"] = {**((task.result if task else None) or {}), **result}
            self._set(ctx.task_id, **values)
        finally:
            with self._lock:
                self._cancel.pop(ctx.task_id, None)
                self._futures.pop(ctx.task_id, None)

    def cancel(self, task_id: int) -> bool:
        with self._lock:
            ev = self._cancel.get(task_id)
        if ev is None:
            return False
        ev.set()
        return True

    def wait(self, task_id: int, timeout: float | None = None) -> None:
        with self._lock:
            fut = self._futures.get(task_id)
        if fut is not None:
            fut.result(timeout=timeout)

    def shutdown(self, wait: bool = True) -> None:
        for ev in list(self._cancel.values()):
            ev.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def recover(self) -> list[int]:
        """At start-up: tasks left pending/running by a dead controller are failed with a reason.

        Workflows that can resume (install) register a resumer in RESUMERS; those
        tasks are handed to it instead.
        """
        recovered: list[int] = []
        with Session(get_engine(self.settings)) as s:
            stale = s.exec(select(Task).where(Task.status.in_([S.TASK_PENDING, S.TASK_RUNNING]))).all()  # type: ignore[attr-defined]
            for task in stale:
                if task.owner == OWNER:
                    continue
                resumer = RESUMERS.get(task.kind)
                if resumer is not None and task.id is not None:
                    recovered.append(task.id)
                    ctx = TaskContext(task.id, task.kind, task.host_id, task.rack_id, dict(task.params),
                                      self.settings)
                    task.owner = OWNER
                    s.add(task)
                    s.commit()
                    with self._lock:
                        self._cancel[task.id] = ctx.cancel_event
                        self._futures[task.id] = self._pool.submit(self._run, ctx, resumer)
                    continue
                task.status = S.TASK_FAILED
                task.error = f"controller {task.owner} stopped while this task was {task.step or 'running'}"
                task.finished_at = utcnow()
                s.add(task)
                s.commit()
                if task.id is not None:
                    recovered.append(task.id)
        return recovered


# kind -> runner that continues a task from its persisted ``step`` after a restart.
RESUMERS: dict[str, Runner] = {}

_runner: TaskRunner | None = None
_runner_lock = threading.Lock()


def get_runner(settings: Settings | None = None) -> TaskRunner:
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = TaskRunner(settings)
        return _runner


def reset_runner() -> None:
    """For tests and shutdown."""
    global _runner
    with _runner_lock:
        if _runner is not None:
            _runner.shutdown(wait=False)
        _runner = None
