"""Background tasks: read them, or cancel one (they are created by workflow endpoints)."""

from __future__ import annotations

from fastapi import APIRouter

from provisioner import crud
from provisioner import states as S
from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.api.pagination import Limit, Offset, RowId
from provisioner.conductor import engine
from provisioner.errors import Conflict
from provisioner.schemas import Page, TaskPublic

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.get("", response_model=Page[TaskPublic])
def list_tasks(
    session: SessionDep, host: str | None = None, status: str | None = None, kind: str | None = None,
    limit: Limit = 100, offset: Offset = 0,
) -> Page[TaskPublic]:
    host_id = crud.get_host(session, host).id if host is not None else None
    rows, total = crud.list_tasks(session, host_id=host_id, status=status, kind=kind, limit=limit, offset=offset)
    return Page[TaskPublic](data=[TaskPublic.model_validate(r) for r in rows], count=total, limit=limit,
                            offset=offset)


@router.get("/{task_id}", response_model=TaskPublic)
def get_task(task_id: RowId, session: SessionDep) -> TaskPublic:
    return TaskPublic.model_validate(crud.get_task(session, task_id))


@router.post("/{task_id}/cancel", response_model=TaskPublic, responses={409: {"description": "already finished"}})
def cancel_task(task_id: RowId, session: SessionDep, settings: SettingsDep) -> TaskPublic:
    """Ask a running task to stop at its next step; its workflow records why and cleans up."""
    task = crud.get_task(session, task_id)
    if task.status in S.TASK_DONE:
        raise Conflict(reason=f"task {task_id} already {task.status}", current_state=task.status)
    if not engine.cancel(task_id, settings):  # any conductor's task: the flag is in the row
        session.refresh(task)
        raise Conflict(reason=f"task {task_id} already {task.status}", current_state=task.status)
    session.refresh(task)
    return TaskPublic.model_validate(task)
