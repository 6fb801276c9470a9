"""KVM guests on a host: ``/api/v1/hosts/{host}/guests``.

``host`` is an enrolled KVM host (name or id) or ``local`` (the controller's own
libvirt, ``settings.virt_uri``). Creation runs every check first (pre-flight
verdict, nested, free memory, duplicates, unknown pool/network) and answers the
failing one as a 4xx with nothing defined; ``?dry_run=true`` stops after the
checks and returns the domain XML (200). Otherwise create and delete answer 202
with a task (``guest-create``/``guest-delete``, followed at ``/api/v1/tasks/{id}``;
its ``result`` is the guest, or what was deleted). Start, stop, reboot, list, show
and the console tail answer directly. The work is the conductor's (conductor/guests.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from provisioner.api.deps import ActorDep, SettingsDep
from provisioner.conductor import guests
from provisioner.conductor.guests import GuestSpec
from provisioner.models import Task
from provisioner.schemas import TaskPublic

router = APIRouter(tags=["guests"])

_TASK: dict[int | str, dict[str, Any]] = {202: {"description": "queued: the task (id, kind, status...) and its link"}}


class StopRequest(BaseModel):
    timeout: float = Field(60.0, ge=0, le=3600, description="seconds to wait for ACPI shutdown before destroy")
    force: bool = Field(False, description="destroy at once")


def _accepted(task: Task, response: Response) -> dict[str, Any]:
    link = f"/api/v1/tasks/{task.id}"
    response.headers["Location"] = link
    return {**TaskPublic.model_validate(task).model_dump(mode="json"), "link": link}


@router.get("/hosts/{host}/guests")
def list_guests(host: str, settings: SettingsDep) -> dict[str, Any]:
    rows = guests.list_guests(settings, host)
    return {"data": rows, "count": len(rows)}


@router.post("/hosts/{host}/guests", status_code=202, responses={200: {"description": "the dry run's plan"}, **_TASK})
def create_guest(host: str, spec: GuestSpec, settings: SettingsDep, actor: ActorDep, response: Response,
                 dry_run: bool = False, start: bool = True) -> dict[str, Any]:
    if dry_run:
        response.status_code = 200
        return guests.plan(settings, host, spec)
    return _accepted(guests.submit_create(settings, host, spec, start=start, actor=actor), response)


@router.get("/hosts/{host}/guests/{name}")
def show_guest(host: str, name: str, settings: SettingsDep) -> dict[str, Any]:
    return guests.show(settings, host, name)


@router.delete("/hosts/{host}/guests/{name}", status_code=202, responses=_TASK)
def delete_guest(host: str, name: str, settings: SettingsDep, actor: ActorDep, response: Response,
                 volumes: bool = True) -> dict[str, Any]:
    return _accepted(guests.submit_delete(settings, host, name, volumes=volumes, actor=actor), response)


@router.post("/hosts/{host}/guests/{name}/start")
def start_guest(host: str, name: str, settings: SettingsDep) -> dict[str, Any]:
    return guests.start(settings, host, name)


@router.post("/hosts/{host}/guests/{name}/stop")
def stop_guest(host: str, name: str, body: StopRequest, settings: SettingsDep) -> dict[str, Any]:
    return guests.stop(settings, host, name, timeout=body.timeout, force=body.force)


@router.post("/hosts/{host}/guests/{name}/reboot")
def reboot_guest(host: str, name: str, settings: SettingsDep) -> dict[str, Any]:
    return guests.reboot(settings, host, name)


@router.get("/hosts/{host}/guests/{name}/console")
def guest_console(host: str, name: str, settings: SettingsDep, lines: int = 50) -> dict[str, Any]:
    return guests.console_tail(settings, host, name, lines)
