"""Host virtualisation pre-flight: ``GET /api/v1/hosts/{host}/virt``.

The report is stored on the host (``Host.virt_report``) and returned from there;
``?refresh=true`` (or a host without a stored report) runs it again: the
pre-flight script over SSH (``root@<ip_address>``) plus libvirt's domain
capabilities from the host's libvirt URI. The pseudo-host ``local`` is the
controller's own machine (``settings.virt_uri``) and is not stored. The
conductor does the work (conductor/virt.py); this module only maps HTTP.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from provisioner.api.deps import SettingsDep
from provisioner.api.offload import run_network_io
from provisioner.conductor import virt

router = APIRouter(tags=["virt"])


class GenerationOut(BaseModel):
    id: str
    name: str
    verdict: str = Field(description="pass | warn | fail")
    detail: str


class VirtReportOut(BaseModel):
    """drivers/virt/preflight.py VirtReport, with the host it describes."""

    model_config = ConfigDict(extra="allow")
    host: str
    uri: str
    overall: str = Field(description="pass | warn | fail")
    summary: str
    kvm_allowed: bool
    nested_allowed: bool
    cpu_vendor: str
    kvm_module: str | None
    generations: list[GenerationOut]
    warnings: list[str] = []
    facts: dict[str, Any] = {}
    libvirt: dict[str, Any] = {}
    checked_at: str | None = None


# Documented, not validated: a report stored by an older controller may lack newer keys.
@router.get("/hosts/{host}/virt", response_model=None, responses={200: {"model": VirtReportOut}})
async def get_host_virt(host: str, settings: SettingsDep, refresh: bool = False) -> dict[str, Any]:
    """The host's virtualisation report (stored; ``refresh=true`` measures it again)."""
    # a refresh runs the pre-flight over SSH (up to 30 s): on the network-I/O threads (api/offload.py)
    return await run_network_io(lambda: virt.host_report(settings, host, refresh=refresh))
