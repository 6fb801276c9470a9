"""What happens when an installer reports in: start, progress, done or error.

The install routes have already checked the one-time token; this module checks
that the host is in a state where the report makes sense and then acts:

* start / progress: a history line (and the install task's result, if one runs);
* done: token revoked, netboot off, host moved install-wait --done--> booting
  (all in one transaction), then the DHCP reservation is re-synced and the
  boot device set to disk in the background. Failures of those two are recorded
  in the host's history, never returned to the installer: the installer did its
  job, and netboot off already guarantees the next PXE boot is a local boot;
* error: token revoked, host moved --fail--> install-failed with the message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlmodel import Session, col, select

from provisioner import lifecycle
from provisioner import states as S
from provisioner.conductor import engine, install_tokens, power
from provisioner.conductor.boot_service import notify_hosts_changed
from provisioner.db import session_scope
from provisioner.drivers.power.base import BootDevice
from provisioner.errors import Conflict
from provisioner.models import Event, Host, Task, utcnow
from provisioner.secret_store import mask
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR = "installer"
EventKind = Literal["start", "progress", "done", "error"]
EVENT_KINDS: tuple[str, ...] = ("start", "progress", "done", "error")

# start/progress may race the workflow's own installing -> install-wait step
# (a fast installer can report before the controller has recorded "wait");
# done/error move the host, so they need the wait state the table expects.
_ACCEPTED_IN: dict[str, frozenset[str]] = {
    "start": frozenset({S.INSTALLING, S.INSTALL_WAIT}),
    "progress": frozenset({S.INSTALLING, S.INSTALL_WAIT}),
    "done": frozenset({S.INSTALL_WAIT}),
    "error": frozenset({S.INSTALL_WAIT}),
}


@dataclass(frozen=True)
class InstallEvent:
    event: EventKind
    message: str = ""
    progress: int | None = None


def _install_task(session: Session, host_id: int) -> Task | None:
    stmt = (
        select(Task)
        .where(Task.host_id == host_id, Task.kind == "install",
               col(Task.status).in_([S.TASK_PENDING, S.TASK_RUNNING]))
        .order_by(col(Task.id).desc())
    )
    return session.exec(stmt).first()


def _note(session: Session, host: Host, event: str, message: str, task_id: int | None) -> None:
    session.add(Event(host_id=host.id, event=event, message=mask(message), actor=ACTOR, task_id=task_id))


def handle(session: Session, host: Host, ev: InstallEvent, settings: Settings | None = None) -> Host:
    """Apply one installer report to ``host`` (token already verified). Raises Conflict (409)."""
    s = settings or get_settings()
    assert host.id is not None
    if host.state not in _ACCEPTED_IN[ev.event]:
        raise Conflict(reason=f"host {host.name} is {host.state}, not waiting for an installer "
                       f"({ev.event!r} refused)", host=host.name, current_state=host.state)
    task = _install_task(session, host.id)
    task_id = task.id if task is not None else None
    text = ev.message or ev.event
    if ev.progress is not None:
        text = f"{text} ({ev.progress}%)"
    if task is not None:
        # The workflow owns step/progress (it resumes from "step"); we only leave
        # the installer's last word where `prov task show` can see it.
        task.result = {**(task.result or {}), "installer": {
            "event": ev.event, "message": mask(ev.message), "progress": ev.progress, "at": utcnow().isoformat()}}
        session.add(task)

    if ev.event in ("start", "progress"):
        _note(session, host, f"install-{ev.event}", text, task_id)
        session.commit()
        session.refresh(host)
        return host

    if ev.event == "done":
        # One transaction: token gone, netboot off, installed_at, state booting.
        # lifecycle.advance flushes these pending changes with its own update
        # and commits them together (or rolls them all back on a conflict).
        install_tokens.revoke(session, host, commit=False)
        host.netboot = False
        host.installed_at = utcnow()
        session.add(host)
        _note(session, host, "install-done", text, task_id)
        lifecycle.advance(session, host, S.DONE, message=f"installer reported done: {text}", actor=ACTOR,
                          task_id=task_id, settings=s)
        _after_done(host, s)
        return host

    # error
    install_tokens.revoke(session, host, commit=False)
    session.add(host)
    lifecycle.advance(session, host, S.FAIL, message=f"installer reported an error: {text}", actor=ACTOR,
                      task_id=task_id, settings=s)
    return host


# --------------------------------------------------------------------------- after done
def _record(host_id: int, event: str, message: str, settings: Settings) -> None:
    with session_scope(settings) as session:
        session.add(Event(host_id=host_id, event=event, message=mask(message), actor="conductor"))
        session.commit()


def sync_dhcp(host_id: int, settings: Settings) -> None:
    """Tell the DHCP side that this host's netboot flag changed (it rewrites only that host's file).

    A failure is recorded in the host's history, never raised: netboot is already
    off in the database, which the boot scripts obey whatever dnsmasq does.
    """
    try:
        notify_hosts_changed()
    except Exception as exc:
        log.warning("dhcp reservation sync for host %s failed: %s", host_id, exc)
        _record(host_id, "dhcp-sync-failed", f"DHCP reservation sync after install failed: {exc}", settings)


def set_disk_boot(host_id: int, settings: Settings) -> bool:
    """Boot device -> disk (persistent). A failure is recorded in the history, never raised."""
    try:
        power.set_boot_device(host_id, device=BootDevice.DISK, persistent=True, settings=settings)
    except Exception as exc:
        log.warning("setting the boot device of host %s to disk failed: %s", host_id, exc)
        _record(host_id, "boot-device-failed", f"could not set the boot device to disk after install: {exc}",
                settings)
        return False
    _record(host_id, "boot-device", "boot device set to disk after install", settings)
    return True


def _after_done(host: Host, settings: Settings) -> None:
    """DHCP re-sync now; the boot device goes to disk here only when no install workflow runs
    (a host netbooted by hand) — otherwise the workflow's boot-disk step owns the BMC."""
    assert host.id is not None
    host_id = host.id
    sync_dhcp(host_id, settings)
    with session_scope(settings) as session:
        if _install_task(session, host_id) is not None:
            return
    try:
        engine.submit(BOOT_DEVICE_KIND, host_id=host_id, params={"device": "disk"}, settings=settings)
    except Exception as exc:
        _record(host_id, "boot-device-failed", f"could not queue the boot-device change: {exc}", settings)


BOOT_DEVICE_KIND = "boot-device"


def run_boot_device(ctx: Any) -> dict[str, Any]:
    """The ``boot-device`` task: the host boots from disk from now on (see _after_done)."""
    return {"boot_device_set": set_disk_boot(ctx.host_id or 0, ctx.settings)}


engine.register(BOOT_DEVICE_KIND, run_boot_device)
