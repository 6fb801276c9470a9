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

import json
import time
from typing import Any

from dbos import DBOS, SetEnqueueOptions, SetWorkflowID
from dbos._error import DBOSQueueDeduplicatedError
from sqlalchemy import update
from sqlmodel import Session

from provisioner import states as S
from provisioner.conductor.engine.lifecycle import (
    migrate_system_database,
    start,
    stop,
    system_database_url,
    take_over,
)
from provisioner.conductor.engine.registry import (
    APP_VERSION,
    INSTALL_QUEUE,
    KINDS,
    TAKEN_OVER_KEY,
    TASK_QUEUE,
    WORKFLOW,
    Kind,
    _off_loop,
    _settings,
    _state,
    executor_id,
    log,
    register,
    running,
)
from provisioner.conductor.engine.workflow import StepFailed, _end, run_step, task_workflow
from provisioner.conductor.tasks import CANCEL_KEY
from provisioner.db import get_engine
from provisioner.errors import Conflict
from provisioner.models import Task, utcnow
from provisioner.secret_store import encrypt, mask
from provisioner.settings import Settings, get_settings

__all__ = ["APP_VERSION", "INSTALL_QUEUE", "KINDS", "TAKEN_OVER_KEY", "TASK_QUEUE", "WORKFLOW", "Kind",
           "StepFailed", "cancel", "executor_id", "migrate_system_database", "register", "run_step", "running",
           "start", "stop", "submit", "system_database_url", "take_over", "task_workflow", "wait"]


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
        if _status(wid) is not None:
            # Left from an earlier application database (restored, or deleted on SQLite while
            # dbos.sqlite stayed): the row it ran for is gone. Enqueuing under its id would return
            # that finished workflow and this task would never run.
            log.warning("workflow %s belongs to a task row that no longer exists: replaced", wid)
            (_state.client or DBOS).delete_workflow(wid)
        if _state.client is not None:
            options: dict[str, Any] = {"workflow_name": WORKFLOW, "queue_name": spec.queue, "workflow_id": wid,
                                       "app_version": APP_VERSION, "application_name": "prov"}
            if spec.exclusive and host_id is not None:
                options["deduplication_id"] = f"host-{host_id}"
            _state.client.enqueue(options, task.id, secret)
            return task
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
            (_state.client or DBOS).cancel_workflow(f"task-{task_id}")
        except Exception:
            log.exception("task %s: cancelling its queued workflow failed", task_id)
    return True


def _status(wid: str) -> Any:
    if _state.client is None:
        return DBOS.get_workflow_status(wid)
    found = _state.client.list_workflows(workflow_ids=[wid], load_input=False, load_output=False)
    return found[0] if found else None


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


