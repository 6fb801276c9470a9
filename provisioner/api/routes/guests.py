"""KVM guests on a host: ``/api/v1/hosts/{host}/guests``.

``host`` is an enrolled KVM host (name or id) or ``local`` (the controller's own
libvirt, ``settings.virt_uri``). Creation runs every check first (pre-flight
verdict, nested, free memory, duplicates, unknown pool/network) and defines
nothing when one fails; ``?dry_run=true`` stops after the checks and returns
the domain XML. The NAT network ``settings.virt_network`` and the directory
pool ``settings.virt_pool`` are created on demand.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.api.routes.virt import connect
from provisioner.drivers.virt.libvirt import NetworkSpec
from provisioner.drivers.virt.spec import GuestSpec
from provisioner.settings import Settings

router = APIRouter(tags=["guests"])


class StopRequest(BaseModel):
    timeout: float = Field(60.0, ge=0, le=3600, description="seconds to wait for ACPI shutdown before destroy")
    force: bool = Field(False, description="destroy at once")


def _auto(settings: Settings) -> tuple[dict[str, NetworkSpec], dict[str, str]]:
    nets = {settings.virt_network: NetworkSpec(settings.virt_network, subnet=settings.virt_network_subnet)}
    return nets, {settings.virt_pool: settings.virt_pool_dir}


@router.get("/hosts/{host}/guests")
def list_guests(host: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        rows = conn.list_guests()
    return {"data": rows, "count": len(rows)}


@router.post("/hosts/{host}/guests", status_code=201)
def create_guest(host: str, spec: GuestSpec, session: SessionDep, settings: SettingsDep,
                 dry_run: bool = False, start: bool = True) -> dict[str, Any]:
    nets, pools = _auto(settings)
    with connect(session, settings, host) as conn:
        # Always a fresh verdict: a stored report may predate a BIOS or kernel module change.
        report = conn.preflight()
        if dry_run:
            plan = conn.plan_guest(spec, report, auto_networks=nets, auto_pools=pools)
            return {"dry_run": True, "verdict": report.overall, **plan.to_dict()}
        info = conn.create_guest(spec, report, start=start, auto_networks=nets, auto_pools=pools)
    return {"dry_run": False, "verdict": report.overall, **info}


@router.get("/hosts/{host}/guests/{name}")
def show_guest(host: str, name: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        return conn.guest_info(name)


@router.delete("/hosts/{host}/guests/{name}")
def delete_guest(host: str, name: str, session: SessionDep, settings: SettingsDep,
                 volumes: bool = True) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        return conn.delete_guest(name, volumes=volumes)


@router.post("/hosts/{host}/guests/{name}/start")
def start_guest(host: str, name: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        conn.start(name)
        return {"name": name, "state": conn.state(name)}


@router.post("/hosts/{host}/guests/{name}/stop")
def stop_guest(host: str, name: str, body: StopRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        if body.force:
            conn.destroy(name)
            how = "destroyed"
        else:
            how = conn.shutdown(name, timeout=body.timeout)
        return {"name": name, "stopped": how, "state": conn.state(name)}


@router.post("/hosts/{host}/guests/{name}/reboot")
def reboot_guest(host: str, name: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        conn.reboot(name)
        return {"name": name, "state": conn.state(name)}


@router.get("/hosts/{host}/guests/{name}/console")
def guest_console(host: str, name: str, session: SessionDep, settings: SettingsDep,
                  lines: int = 50) -> dict[str, Any]:
    with connect(session, settings, host) as conn:
        return {"name": name, "lines": conn.console_tail(name, max(1, min(lines, 5000)))}
