"""Background tasks, read-only (they are created by workflow endpoints)."""

from __future__ import annotations

from fastapi import APIRouter

from provisioner import crud
from provisioner.api.deps import SessionDep
from provisioner.api.pagination import Limit, Offset
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
def get_task(task_id: int, session: SessionDep) -> TaskPublic:
    return TaskPublic.model_validate(crud.get_task(session, task_id))
