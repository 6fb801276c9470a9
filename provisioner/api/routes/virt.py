"""Host virtualisation pre-flight: ``GET /api/v1/hosts/{host}/virt``.

The report is stored on the host (``Host.virt_report``) and returned from there;
``?refresh=true`` (or a host without a stored report) runs it again: the
pre-flight script over SSH (``root@<ip_address>``) plus libvirt's domain
capabilities from the host's libvirt URI. The pseudo-host ``local`` is the
controller's own machine (``settings.virt_uri``) and is not stored.

A KVM host's libvirt URI is ``bmc_options.virt_uri`` when set, else
``qemu+ssh://root@<ip_address>/system``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlmodel import Session

from provisioner import crud
from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.drivers.virt import preflight
from provisioner.drivers.virt.libvirt import VirtConnection, open_connection, ssh_target
from provisioner.errors import InvalidInput, ProvError, VirtError
from provisioner.models import Host, utcnow
from provisioner.settings import Settings

router = APIRouter(tags=["virt"])

LOCAL = "local"


def host_uri(session: Session, settings: Settings, ident: str) -> tuple[str, Host | None]:
    """The libvirt URI for ``ident`` (``local`` = the controller) and its Host row."""
    if ident == LOCAL:
        return settings.virt_uri, None
    host = crud.get_host(session, ident)
    uri = (host.bmc_options or {}).get("virt_uri")
    if uri:
        return str(uri), host
    if not host.ip_address:
        raise InvalidInput(field="ip_address", reason=f"host {host.name} has no address to reach libvirt over SSH")
    return f"qemu+ssh://root@{host.ip_address}/system", host


def connect(session: Session, settings: Settings, ident: str) -> VirtConnection:
    uri, _host = host_uri(session, settings, ident)
    return open_connection(uri, console_dir=settings.virt_console_dir, default_pool=settings.virt_pool,
                           default_network=settings.virt_network)


def run_preflight(uri: str, ssh: tuple[str, list[str]] | None) -> preflight.VirtReport:
    """Facts (local, or over SSH to ``ssh = (target, options)``) cross-checked with libvirt when it answers."""
    domcaps: dict[str, Any] | None = None
    libvirt_error = None
    try:
        with open_connection(uri) as conn:
            domcaps = conn.domain_capabilities()
    except ProvError as exc:
        libvirt_error = exc.message
    if ssh is None:
        facts = preflight.collect_facts("/")
    else:
        try:
            facts = preflight.remote_facts(ssh[0], ssh_options=ssh[1])
        except (RuntimeError, OSError, ValueError) as exc:
            raise VirtError(reason=f"pre-flight over SSH failed: {exc}") from None
    report = preflight.evaluate(facts, domcaps)
    if libvirt_error:
        report.warnings.append(f"libvirt not reachable ({libvirt_error}); report from /proc and /sys only")
    return report


@router.get("/hosts/{host}/virt")
def get_host_virt(host: str, session: SessionDep, settings: SettingsDep, refresh: bool = False) -> dict[str, Any]:
    """The host's virtualisation report (stored; ``refresh=true`` measures it again)."""
    uri, row = host_uri(session, settings, host)
    if row is not None and row.virt_report and not refresh:
        return {"host": row.name, "uri": uri, **row.virt_report}
    ssh: tuple[str, list[str]] | None = None
    if row is not None:
        # the libvirt URI's own SSH target and options (keyfile, no_verify), else root@<address>
        ssh = ssh_target(uri) or ((f"root@{row.ip_address}", []) if row.ip_address else None)
        if ssh is None:
            raise InvalidInput(field="ip_address", reason=f"host {row.name} has no address for the SSH pre-flight")
    report = run_preflight(uri, ssh).to_dict()
    report["checked_at"] = utcnow().isoformat()
    if row is not None:
        row.virt_report = report
        row.updated_at = utcnow()
        session.add(row)
        session.commit()
    return {"host": row.name if row else LOCAL, "uri": uri, **report}
