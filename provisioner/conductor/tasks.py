"""What a task's runner gets (TaskContext), and the errors that end a task early.

Every long action (power on a rack, install, configure) is a Task row, our domain view that
the API and CLI read; the engine (conductor/engine.py, DBOS workflows) runs it. The row is
written before the work starts and after each step. Writes of progress, step and result are a
compare-and-set on ``Task.owner``: a conductor whose task was taken over by another one finds
0 rows and stops (``Fenced``), so one host's step never runs on two conductors at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from provisioner.db import get_engine
from provisioner.errors import ProvError
from provisioner.models import Event, Task, utcnow
from provisioner.secret_store import mask
from provisioner.settings import Settings

log = logging.getLogger(__name__)

# Set in Task.result by a cancel request (any process); the runner's next progress() sees it.
CANCEL_KEY = "cancel_requested"

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


class Fenced(ProvError):
    """This conductor no longer owns the task (another one took it over): stop, write nothing."""

    code = "task_fenced"
    http_status = 409
    template = "task {task_id} is now run by {owner}; this conductor ({me}) stops"


@dataclass
class TaskContext:
    """What a task's runner gets: its ids, params, and ways to report progress."""

    task_id: int
    kind: str
    host_id: int | None
    rack_id: int | None
    params: dict[str, Any]
    settings: Settings
    owner: str = ""  # the executor running it: every progress write is a compare-and-set on it
    resumed: bool = False  # a re-execution after the conductor that began it stopped (crash, take-over)
    private: dict[str, Any] = field(default_factory=dict, repr=False)  # inputs kept out of Task.params
    cancel_event: threading.Event = field(default_factory=threading.Event)
    announced: bool = field(default=False, repr=False)  # a resumed workflow said so in the history
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
            values: dict[str, Any] = {"heartbeat_at": utcnow()}
            if pct is not None:
                values["progress"] = max(0, min(100, pct))
            if step is not None:
                values["step"] = step
            if result:
                values["result"] = {**(task.result or {}), **result}
            if (task.result or {}).get(CANCEL_KEY):
                self.cancel_event.set()
            self.fenced_update(s, values, owner=task.owner)

    def fenced_update(self, s: Session, values: dict[str, Any], *, owner: str | None = None) -> None:
        """UPDATE task ... WHERE owner = me, committed; 0 rows: another conductor owns it (Fenced)."""
        stmt = update(Task).where(Task.id == self.task_id, Task.owner == self.owner).values(**values)  # type: ignore[arg-type]
        if s.execute(stmt).rowcount == 0:  # type: ignore[attr-defined]
            s.rollback()
            current = owner if owner is not None else getattr(s.get(Task, self.task_id), "owner", None)
            raise Fenced(task_id=self.task_id, owner=current or "?", me=self.owner)
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
