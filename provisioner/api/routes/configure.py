"""Configure (Ansible) routes: run playbooks on a host or a rack, follow a run.

``POST /hosts/{host}/configure`` and ``POST /racks/{rack}/configure`` answer
202 with the task; ``GET /configure/{task_id}`` returns the task plus the host
history lines the run wrote after ``after`` (the CLI's live view polls it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlmodel import select

from provisioner import crud
from provisioner.api.deps import ActorDep, SessionDep, SettingsDep
from provisioner.api.pagination import MAX_ID, RowId
from provisioner.conductor import configure
from provisioner.errors import NotFound
from provisioner.models import Event, Host, Task
from provisioner.schemas import TaskPublic

router = APIRouter(tags=["configure"])


class ConfigureBody(BaseModel):
    playbooks: list[str] = Field(default_factory=lambda: ["site"], description="site | harden | container-engine")
    engine: str = Field(default="docker", description="docker | podman | none")
    vars: dict[str, Any] = Field(
        default_factory=dict, description="role switches for this run, e.g. {\"hardening_auditd\": false}"
    )
    admin_keys: list[str] = Field(default_factory=list, description="extra OpenSSH public keys for the admin user")

    def to_request(self) -> configure.ConfigureRequest:
        return configure.ConfigureRequest(
            playbooks=list(self.playbooks), engine=self.engine, vars=dict(self.vars), admin_keys=list(self.admin_keys)
        )


class ConfigureEvent(BaseModel):
    id: int
    host: str | None
    event: str
    from_state: str | None
    to_state: str | None
    message: str
    created_at: datetime


class ConfigureStatus(BaseModel):
    task: TaskPublic = Field(description="the run (its params without the admin keys)")
    events: list[ConfigureEvent] = Field(description="the history lines it wrote after ``after``")


def task_public(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "status": task.status,
        "host_id": task.host_id,
        "rack_id": task.rack_id,
        "step": task.step,
        "progress": task.progress,
        "params": {k: v for k, v in (task.params or {}).items() if k != "admin_keys"},
        "result": task.result,
        "error": task.error,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
    }


@router.post("/hosts/{host}/configure", status_code=202, response_model=TaskPublic)
def configure_host(host: str, body: ConfigureBody, session: SessionDep, settings: SettingsDep,
                   actor: ActorDep) -> dict[str, Any]:
    row = crud.get_host(session, host)
    task = configure.submit(session, [row], body.to_request(), actor=actor, settings=settings)
    return task_public(task)


@router.post("/racks/{rack}/configure", status_code=202, response_model=TaskPublic)
def configure_rack(rack: str, body: ConfigureBody, session: SessionDep, settings: SettingsDep,
                   actor: ActorDep) -> dict[str, Any]:
    row = crud.get_rack(session, rack)
    assert row.id is not None
    hosts = crud.rack_hosts(session, rack_id=row.id)
    task = configure.submit(session, hosts, body.to_request(), actor=actor, rack_id=row.id, settings=settings)
    return task_public(task)


@router.get("/configure/{task_id}", response_model=ConfigureStatus)
def configure_status(task_id: RowId, session: SessionDep,
                     after: int = Query(0, ge=0, le=MAX_ID,
                                        description="only history lines with a larger id")) -> dict[str, Any]:
    task = session.get(Task, task_id)
    if task is None or task.kind != configure.KIND:
        raise NotFound(kind="configure task", name=str(task_id))
    rows = session.exec(
        select(Event).where(Event.task_id == task_id).where(Event.id > after).order_by(Event.id)  # type: ignore[arg-type,operator]
    ).all()
    hosts = {}
    for ev in rows:
        if ev.host_id is not None and ev.host_id not in hosts:
            h = session.get(Host, ev.host_id)
            hosts[ev.host_id] = h.name if h else str(ev.host_id)
    events = [
        {"id": ev.id, "host": hosts.get(ev.host_id) if ev.host_id is not None else None, "event": ev.event,
         "from_state": ev.from_state, "to_state": ev.to_state, "message": ev.message, "created_at": ev.created_at}
        for ev in rows
    ]
    return {"task": task_public(task), "events": events}
