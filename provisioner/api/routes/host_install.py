"""Install one host, or provision a whole rack (see conductor/install.py and conductor/rack.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from provisioner.api.deps import ActorDep, SessionDep, SettingsDep
from provisioner.conductor import install
from provisioner.conductor import rack as rack_workflow
from provisioner.schemas import TaskPublic

router = APIRouter(tags=["provision"])

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "the host is not in a state that allows this (current_state, allowed_events)"},
}


class InstallBody(BaseModel):
    profile: str | None = Field(default=None, max_length=63, description="OS profile; default: the host's")
    configure: bool | None = Field(default=None, description="run the profile's playbooks; default: if any")
    playbooks: list[str] | None = Field(default=None, max_length=16)
    engine: str | None = Field(default=None, pattern="^(docker|podman|none)$")


class RackProvisionBody(BaseModel):
    roles: list[str] | None = Field(default=None, max_length=32, description="only hosts with one of these roles")
    concurrency: int = Field(default=4, ge=1, le=256, description="hosts installed at once; the rest wait")
    profile: str | None = Field(default=None, max_length=63)
    configure: bool | None = None
    reinstall: bool = Field(default=False, description="also reinstall hosts that are active")


@router.post("/hosts/{host}/install", status_code=202, response_model=TaskPublic, responses=_CONFLICT)
def install_host(host: str, session: SessionDep, settings: SettingsDep, actor: ActorDep,
                 body: InstallBody | None = None) -> TaskPublic:
    b = body or InstallBody()
    task = install.start(session, host, install.InstallRequest(b.profile, b.configure, b.playbooks, b.engine),
                         actor=actor, settings=settings)
    return TaskPublic.model_validate(task)


@router.post("/hosts/{host}/retry", status_code=202, response_model=TaskPublic, responses=_CONFLICT)
def retry_host(host: str, session: SessionDep, settings: SettingsDep, actor: ActorDep) -> TaskPublic:
    return TaskPublic.model_validate(install.retry(session, host, actor=actor, settings=settings))


@router.post("/racks/{rack}/provision", status_code=202, response_model=TaskPublic)
def provision_rack(rack: str, session: SessionDep, settings: SettingsDep, actor: ActorDep,
                   body: RackProvisionBody | None = None) -> TaskPublic:
    b = body or RackProvisionBody()
    task = rack_workflow.start(session, rack, roles=b.roles, concurrency=b.concurrency, profile=b.profile,
                      configure=b.configure, reinstall=b.reinstall, actor=actor, settings=settings)
    return TaskPublic.model_validate(task)
