"""KVM hosts as the conductor reaches them: which libvirt, its connection, its pre-flight report.

A KVM host is an enrolled host (name or id) or ``local``, the controller's own
libvirt (``settings.virt_uri``). An enrolled host's libvirt URI is
``bmc_options.virt_uri`` when set, else ``qemu+ssh://root@<ip_address>/system``.

The database is never held across libvirt or SSH I/O: ``kvm_host()`` reads what
is needed in a short session and closes it, the I/O happens with no session
open, and a result is written in a new short session (``refresh_report``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from provisioner import crud
from provisioner.db import get_engine
from provisioner.drivers.virt import fake, preflight
from provisioner.drivers.virt.base import VirtInterface
from provisioner.drivers.virt.libvirt import open_connection
from provisioner.drivers.virt.libvirt_host import ssh_target
from provisioner.errors import InvalidInput, ProvError, VirtError
from provisioner.models import Host, utcnow
from provisioner.settings import Settings

LOCAL = "local"


@dataclass(frozen=True)
class KvmHost:
    """What the conductor needs to reach one KVM host, copied out of the database."""

    name: str  # the host's name, or "local"
    uri: str
    host_id: int | None = None  # None: the controller itself (no row, no history, no stored report)
    ip_address: str | None = None
    virt_report: dict[str, Any] | None = None


@contextmanager
def _short_session(settings: Settings) -> Iterator[Session]:
    with Session(get_engine(settings), expire_on_commit=False) as session:
        yield session


def kvm_host(settings: Settings, ident: str) -> KvmHost:
    """Resolve ``ident`` (``local``, a host name or id) in a short session; NotFound/InvalidInput otherwise."""
    if ident == LOCAL:
        return KvmHost(LOCAL, settings.virt_uri)
    with _short_session(settings) as session:
        host = crud.get_host(session, ident)
        name, host_id, ip, stored = host.name, host.id, host.ip_address, host.virt_report
        uri = str((host.bmc_options or {}).get("virt_uri") or "")
    if not uri:
        if not ip:
            raise InvalidInput(field="ip_address", reason=f"host {name} has no address to reach libvirt over SSH")
        uri = f"qemu+ssh://root@{ip}/system"
    return KvmHost(name, uri, host_id, ip, dict(stored) if stored else None)


def host_uri(settings: Settings, ident: str) -> str:
    """The libvirt URI of ``ident``."""
    return kvm_host(settings, ident).uri


def open_uri(uri: str, settings: Settings | None = None) -> VirtInterface:
    """A connection to ``uri``: the in-memory fake for ``fake://``, libvirt for everything else."""
    pool = settings.virt_pool if settings else "default"
    network = settings.virt_network if settings else "default"
    if uri.startswith(fake.SCHEME):
        return fake.open_fake(uri, default_pool=pool, default_network=network)
    return open_connection(uri, console_dir=settings.virt_console_dir if settings else None,
                           default_pool=pool, default_network=network)


def connect(settings: Settings, host: str | KvmHost) -> VirtInterface:
    """An open connection to a KVM host's libvirt (close it: use ``with``)."""
    target = host if isinstance(host, KvmHost) else kvm_host(settings, host)
    return open_uri(target.uri, settings)


def run_preflight(uri: str, ssh: tuple[str, list[str]] | None) -> preflight.VirtReport:
    """Facts (local, or over SSH to ``ssh = (target, options)``) cross-checked with libvirt when it answers."""
    domcaps: dict[str, Any] | None = None
    libvirt_error = None
    try:
        with open_uri(uri) as conn:
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


def _ssh_of(target: KvmHost) -> tuple[str, list[str]] | None:
    """Where the pre-flight script runs: None = here; else the URI's own SSH target and options, or root@<ip>."""
    if target.host_id is None:
        return None
    ssh = ssh_target(target.uri) or ((f"root@{target.ip_address}", []) if target.ip_address else None)
    if ssh is None:
        raise InvalidInput(field="ip_address", reason=f"host {target.name} has no address for the SSH pre-flight")
    return ssh


def _store_report(settings: Settings, host_id: int, report: dict[str, Any]) -> None:
    with _short_session(settings) as session:
        row = session.get(Host, host_id)
        if row is None:  # deleted while we measured: nothing to store it on
            return
        row.virt_report = report
        row.updated_at = utcnow()
        session.add(row)
        session.commit()


def refresh_report(settings: Settings, host: str | KvmHost) -> dict[str, Any]:
    """Measure the host's virtualisation again and store it on the host (``local`` is not stored)."""
    target = host if isinstance(host, KvmHost) else kvm_host(settings, host)
    report = run_preflight(target.uri, _ssh_of(target)).to_dict()
    report["checked_at"] = utcnow().isoformat()
    if target.host_id is not None:
        _store_report(settings, target.host_id, report)
    return {"host": target.name, "uri": target.uri, **report}


def host_report(settings: Settings, ident: str, *, refresh: bool = False) -> dict[str, Any]:
    """The stored report of an enrolled host, measured (and stored) when there is none or ``refresh``."""
    target = kvm_host(settings, ident)
    if target.virt_report and not refresh:
        return {"host": target.name, "uri": target.uri, **target.virt_report}
    return refresh_report(settings, target)
