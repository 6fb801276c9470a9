"""KVM guests on a host: ``/api/v1/hosts/{host}/guests``.

``host`` is an enrolled KVM host (name or id) or ``local`` (the controller's own
libvirt, ``settings.virt_uri``). Creation runs every check first (pre-flight
verdict, nested, free memory, duplicates, unknown pool/network) and answers the
failing one as a 4xx with nothing defined; ``?dry_run=true`` stops after the
checks and returns the domain XML (200). Otherwise create and delete answer 202
with a task (``guest-create``/``guest-delete``, followed at ``/api/v1/tasks/{id}``;
its ``result`` is the guest, or what was deleted). Start, stop, reboot, list, show
and the console tail answer directly. The work is the conductor's (conductor/guests.py); it
talks to libvirt (a guest stop waits up to its timeout), so it runs on the network-I/O threads
(api/offload.py), never on the few route threads.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from provisioner.api.deps import ActorDep, SettingsDep
from provisioner.api.offload import run_network_io
from provisioner.conductor import guests
from provisioner.conductor.guests import GuestSpec
from provisioner.models import Task
from provisioner.schemas import TaskPublic

router = APIRouter(tags=["guests"])


class GuestOut(BaseModel):
    """A guest as the driver describes it (drivers/virt); NICs and disks keep the driver's keys."""

    model_config = ConfigDict(extra="allow")
    name: str
    uuid: str
    state: str
    virt_type: str | None
    vcpus: int
    memory_mib: int
    nics: list[dict[str, Any]]
    disks: list[dict[str, Any]]
    console_log: str | None
    managed: bool = Field(description="made by prov (carries prov's metadata)")


class GuestList(BaseModel):
    data: list[GuestOut]
    count: int


class GuestState(BaseModel):
    name: str
    state: str


class GuestStopped(GuestState):
    stopped: str = Field(description="how: shutdown (ACPI) or destroyed")


class GuestConsole(BaseModel):
    name: str
    lines: list[str]


class TaskAccepted(TaskPublic):
    link: str = Field(description="where to follow the task")


class GuestPlan(BaseModel):
    """The dry run: the verdict, the domain XML and what would be made (drivers/virt plan_guest)."""

    model_config = ConfigDict(extra="allow")
    dry_run: bool
    verdict: str


_TASK: dict[int | str, dict[str, Any]] = {
    202: {"description": "queued: the task (id, kind, status...) and its link", "model": TaskAccepted}}


class StopRequest(BaseModel):
    timeout: float = Field(60.0, ge=0, le=3600, description="seconds to wait for ACPI shutdown before destroy")
    force: bool = Field(False, description="destroy at once")


def _accepted(task: Task, response: Response) -> dict[str, Any]:
    link = f"/api/v1/tasks/{task.id}"
    response.headers["Location"] = link
    return {**TaskPublic.model_validate(task).model_dump(mode="json"), "link": link}


@router.get("/hosts/{host}/guests", response_model=GuestList)
async def list_guests(host: str, settings: SettingsDep) -> dict[str, Any]:
    rows = await run_network_io(lambda: guests.list_guests(settings, host))
    return {"data": rows, "count": len(rows)}


# Two answers (the plan, 200, or the task, 202): documented per status, not validated.
@router.post("/hosts/{host}/guests", status_code=202, response_model=None,
             responses={200: {"description": "the dry run's plan", "model": GuestPlan}, **_TASK})
async def create_guest(host: str, spec: GuestSpec, settings: SettingsDep, actor: ActorDep, response: Response,
                       dry_run: bool = False, start: bool = True) -> dict[str, Any]:
    if dry_run:
        response.status_code = 200
        return await run_network_io(lambda: guests.plan(settings, host, spec))
    task = await run_network_io(lambda: guests.submit_create(settings, host, spec, start=start, actor=actor))
    return _accepted(task, response)


@router.get("/hosts/{host}/guests/{name}", response_model=GuestOut)
async def show_guest(host: str, name: str, settings: SettingsDep) -> dict[str, Any]:
    return await run_network_io(lambda: guests.show(settings, host, name))


@router.delete("/hosts/{host}/guests/{name}", status_code=202, response_model=TaskAccepted, responses=_TASK)
async def delete_guest(host: str, name: str, settings: SettingsDep, actor: ActorDep, response: Response,
                       volumes: bool = True) -> dict[str, Any]:
    task = await run_network_io(lambda: guests.submit_delete(settings, host, name, volumes=volumes, actor=actor))
    return _accepted(task, response)


@router.post("/hosts/{host}/guests/{name}/start", response_model=GuestState)
async def start_guest(host: str, name: str, settings: SettingsDep) -> dict[str, Any]:
    return await run_network_io(lambda: guests.start(settings, host, name))


@router.post("/hosts/{host}/guests/{name}/stop", response_model=GuestStopped)
async def stop_guest(host: str, name: str, body: StopRequest, settings: SettingsDep) -> dict[str, Any]:
    return await run_network_io(lambda: guests.stop(settings, host, name, timeout=body.timeout, force=body.force))


@router.post("/hosts/{host}/guests/{name}/reboot", response_model=GuestState)
async def reboot_guest(host: str, name: str, settings: SettingsDep) -> dict[str, Any]:
    return await run_network_io(lambda: guests.reboot(settings, host, name))


@router.get("/hosts/{host}/guests/{name}/console", response_model=GuestConsole)
async def guest_console(host: str, name: str, settings: SettingsDep, lines: int = 50) -> dict[str, Any]:
    return await run_network_io(lambda: guests.console_tail(settings, host, name, lines))
