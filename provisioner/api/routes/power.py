"""Power, boot device and BMC verification for one host or a whole rack.

A single-host call answers synchronously with the confirmed state (it is
bounded by the power service's timeouts). Rack-wide changes run as a task
by default (``background: true``) so the caller can follow progress through
``GET /api/v1/tasks/{id}``; ``background: false`` answers with the per-host
results directly.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from provisioner.api.deps import ActorDep, SettingsDep
from provisioner.api.offload import run_network_io
from provisioner.conductor import power as power_service
from provisioner.conductor import rack_power
from provisioner.conductor.verify import verify_host
from provisioner.models import Task
from provisioner.states import BootDevice, PowerAction

router = APIRouter(tags=["power"])


class PowerRequest(BaseModel):
    action: PowerAction
    wait: bool = Field(True, description="poll the BMC until it confirms the new state")


class RackPowerRequest(PowerRequest):
    background: bool = Field(True, description="run as a task and answer with its id")


class BootDeviceRequest(BaseModel):
    device: BootDevice
    persistent: bool = False
    uefi: bool = False


class RackBootDeviceRequest(BootDeviceRequest):
    background: bool = False


class PowerResultOut(BaseModel):
    """One host's answer (conductor/power.py PowerResult)."""

    host: str
    host_id: int
    ok: bool
    action: str
    power_state: str
    error: str | None = Field(description="error code when not ok: bmc_auth, bmc_timeout, bmc_unreachable...")
    message: str
    attempts: int
    seconds: float
    details: dict[str, Any]


class VerifyOut(BaseModel):
    host: str
    state: str
    last_error: str | None
    power_state: str | None


class RackPowerOut(BaseModel):
    rack: str
    results: list[PowerResultOut]
    count: int
    failed: int = Field(description="hosts whose call failed")


class RackTaskOut(BaseModel):
    """``background: true``: follow the task at /api/v1/tasks/{task_id}."""

    rack: str
    task_id: int
    status: str


_summary = rack_power.summary


# The routes below wait on BMCs: async, no request-scoped session (the power service reads and
# writes in short sessions of its own, none open across a BMC call), the wait in the network-I/O
# threads (api/offload.py), so dead BMCs hold neither pooled connections nor shared threads.
@router.get("/hosts/{host}/power", response_model=PowerResultOut)
async def get_host_power(host: str, settings: SettingsDep, actor: ActorDep) -> dict[str, Any]:
    """Ask the BMC now (and record the answer on the host)."""
    return await run_network_io(lambda: power_service.get_power(host, settings=settings, actor=actor).to_dict())


@router.post("/hosts/{host}/power", response_model=PowerResultOut)
async def post_host_power(host: str, body: PowerRequest, settings: SettingsDep, actor: ActorDep) -> dict[str, Any]:
    return await run_network_io(lambda: power_service.power_action(
        host, body.action, settings=settings, wait=body.wait, actor=actor).to_dict())


@router.put("/hosts/{host}/boot-device", response_model=PowerResultOut)
async def put_host_boot_device(host: str, body: BootDeviceRequest, settings: SettingsDep,
                               actor: ActorDep) -> dict[str, Any]:
    return await run_network_io(lambda: power_service.set_boot_device(
        host, settings=settings, device=body.device, persistent=body.persistent, uefi=body.uefi,
        actor=actor).to_dict())


@router.post("/hosts/{host}/verify", response_model=VerifyOut)
async def post_host_verify(host: str, settings: SettingsDep, actor: ActorDep) -> dict[str, Any]:
    """enrolled|available|verify-failed -> verifying -> available|verify-failed (answers when done).

    409 at once when the host is already being verified."""
    done = await run_network_io(lambda: verify_host(host, settings=settings, actor=actor))
    return {"host": done.name, "state": done.state, "last_error": done.last_error if done.state != "available"
            else None, "power_state": done.power_state}


def _rack_task(task: Task) -> dict[str, Any]:
    return {"task_id": task.id, "status": task.status}


@router.get("/racks/{rack}/power", response_model=RackPowerOut)
async def get_rack_power(rack: str, settings: SettingsDep) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        rid, name = power_service.rack_ref(rack, settings=settings)
        return {"rack": name, **_summary(power_service.rack_get_power(rid, settings=settings))}

    return await run_network_io(run)


@router.post("/racks/{rack}/power", response_model=RackTaskOut | RackPowerOut)
async def post_rack_power(rack: str, body: RackPowerRequest, settings: SettingsDep, actor: ActorDep) -> dict[str, Any]:
    return await run_network_io(lambda: _post_rack_power(rack, body, settings, actor))


def _post_rack_power(rack: str, body: RackPowerRequest, settings: SettingsDep, actor: ActorDep) -> dict[str, Any]:
    rid, name = power_service.rack_ref(rack, settings=settings)

    def fn(progress: Any = None, task_id: int | None = None) -> list[power_service.PowerResult]:
        return power_service.rack_power_action(rid, body.action, settings=settings, wait=body.wait, actor=actor,
                                               task_id=task_id, progress=progress)

    if body.background:
        return {"rack": name, **_rack_task(rack_power.submit_power(rid, body.action, wait=body.wait, actor=actor,
                                                                   settings=settings))}
    return {"rack": name, **_summary(fn())}


@router.put("/racks/{rack}/boot-device", response_model=RackTaskOut | RackPowerOut)
async def put_rack_boot_device(rack: str, body: RackBootDeviceRequest, settings: SettingsDep,
                               actor: ActorDep) -> dict[str, Any]:
    return await run_network_io(lambda: _put_rack_boot_device(rack, body, settings, actor))


def _put_rack_boot_device(rack: str, body: RackBootDeviceRequest, settings: SettingsDep,
                          actor: ActorDep) -> dict[str, Any]:
    rid, name = power_service.rack_ref(rack, settings=settings)
    setting = power_service.BootSetting(body.device, persistent=body.persistent, uefi=body.uefi)

    def fn(progress: Any = None, task_id: int | None = None) -> list[power_service.PowerResult]:
        return power_service.rack_set_boot_device(rid, setting, settings=settings, actor=actor, task_id=task_id,
                                                  progress=progress)

    if body.background:
        return {"rack": name, **_rack_task(rack_power.submit_boot_device(rid, setting, actor=actor,
                                                                         settings=settings))}
    return {"rack": name, **_summary(fn())}
