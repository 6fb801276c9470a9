"""The one DBOS workflow every task kind runs in, and checkpointed steps (run_step)."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any

from dbos import DBOS
from dbos._error import DBOSWorkflowCancelledError
from sqlalchemy import update
from sqlmodel import Session

from provisioner import states as S
from provisioner.conductor.engine.registry import KINDS, TAKEN_OVER_KEY, WORKFLOW, _settings, _state, log
from provisioner.conductor.tasks import Fenced, TaskCancelled, TaskContext
from provisioner.db import get_engine
from provisioner.errors import ProvError
from provisioner.models import Task, utcnow
from provisioner.secret_store import decrypt, mask
from provisioner.settings import get_settings


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

