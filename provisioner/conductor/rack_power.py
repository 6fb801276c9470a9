"""Rack-wide power and boot-device changes as tasks (``POST /racks/{rack}/power``, background).

Named runners for the engine (conductor/engine.py): the request's values live in the task's
params, so a task can be read, cancelled and run by any conductor.
"""

from __future__ import annotations

import threading
from typing import Any

from provisioner.conductor import engine
from provisioner.conductor import power as power_service
from provisioner.conductor.tasks import TaskContext
from provisioner.models import Task
from provisioner.settings import Settings
from provisioner.states import BootDevice, PowerAction

POWER_KIND = "rack-power"
BOOT_DEVICE_KIND = "rack-boot-device"


def summary(results: list[power_service.PowerResult]) -> dict[str, Any]:
    rows = [r.to_dict() for r in results]
    return {"results": rows, "count": len(rows), "failed": sum(1 for r in results if not r.ok)}


def submit_power(rack_id: int, action: PowerAction, *, wait: bool, actor: str, settings: Settings) -> Task:
    return engine.submit(POWER_KIND, rack_id=rack_id, settings=settings,
                         params={"action": action.value, "wait": wait, "actor": actor})


def submit_boot_device(rack_id: int, setting: power_service.BootSetting, *, actor: str,
                       settings: Settings) -> Task:
    return engine.submit(BOOT_DEVICE_KIND, rack_id=rack_id, settings=settings,
                         params={"device": BootDevice(setting.device).value, "persistent": setting.persistent,
                                 "uefi": setting.uefi, "actor": actor})


def _progress(ctx: TaskContext) -> power_service.ProgressFn:
    last = {"pct": -1}
    lock = threading.Lock()

    def progress(n: int, total: int, _r: power_service.PowerResult) -> None:
        pct = int(100 * n / total)
        with lock:  # one row write per percent, not per host (1,000 hosts)
            if pct == last["pct"] and n != total:
                return
            last["pct"] = pct
            ctx.progress(pct, step=f"{n}/{total}")

    return progress


def run_power(ctx: TaskContext) -> dict[str, Any]:
    p = ctx.params
    return summary(power_service.rack_power_action(
        ctx.rack_id or 0, PowerAction(p["action"]), settings=ctx.settings, wait=bool(p.get("wait", True)),
        actor=str(p.get("actor") or "system"), task_id=ctx.task_id, progress=_progress(ctx)))


def run_boot_device(ctx: TaskContext) -> dict[str, Any]:
    p = ctx.params
    setting = power_service.BootSetting(BootDevice(p["device"]), persistent=bool(p.get("persistent")),
                                        uefi=bool(p.get("uefi")))
    return summary(power_service.rack_set_boot_device(
        ctx.rack_id or 0, setting, settings=ctx.settings, actor=str(p.get("actor") or "system"),
        task_id=ctx.task_id, progress=_progress(ctx)))


engine.register(POWER_KIND, run_power)
engine.register(BOOT_DEVICE_KIND, run_boot_device)
