"""The install workflow: from ``available`` to ``active`` with one request.

validate → power off → one-time boot device PXE → netboot on (token minted,
DHCP reservation synced) → power on → wait for the installer's callbacks →
boot device disk → power on if the installer left the host off → wait for SSH
(host key recorded) → configuration playbooks (if the profile has them) → active.

Each step is a checkpointed step of the install's DBOS workflow (conductor/engine.py),
and written to ``task.step`` for display: a conductor that is killed (or taken over)
resumes the install in the step it was in; every step is idempotent for that reason.
Waits are bounded by the host's state deadline (lifecycle.deadline_seconds), enforced by the timeout checker, so no
host waits forever. Two install requests for one host: ``lifecycle.advance``'s
compare-and-set lets exactly one through, the other gets 409.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from provisioner import crud, lifecycle, netspec
from provisioner import metrics as prov_metrics
from provisioner import states as S
from provisioner.conductor import engine, install_tokens
from provisioner.conductor import power as power_svc
from provisioner.conductor.tasks import Fenced, TaskCancelled, TaskContext, retry_transient
from provisioner.drivers.power.base import BootDevice, BootSetting, PowerAction, PowerState
from provisioner.errors import Conflict, DriverError, InvalidInput, ProvError
from provisioner.models import Host, Profile, Task, utcnow
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

STEPS = ("power-off", "boot-pxe", "netboot-on", "power-on", "wait-installer", "boot-disk", "first-boot",
         "wait-ssh", "configure", "done")
# Task progress (%) when each step starts: the installer's own time dominates.
_PROGRESS = {"power-off": 2, "boot-pxe": 5, "netboot-on": 8, "power-on": 10, "wait-installer": 12,
             "boot-disk": 60, "first-boot": 62, "wait-ssh": 65, "configure": 75, "done": 100}
POLL = 1.0  # seconds between state checks while waiting for the host
SSH_PORT = 22


class InstallFailed(DriverError):
    code = "install_failed"
    template = "{reason}"


@dataclass(frozen=True)
class InstallRequest:
    profile: str | None = None
    configure: bool | None = None  # None: configure when the profile has playbooks
    playbooks: list[str] | None = None
    engine: str | None = None


# --------------------------------------------------------------------------- validation
def _ssh_address(session: Session, host: Host) -> str | None:
    if host.ip_address:
        return host.ip_address
    assert host.id is not None
    nics = crud.host_nics(session, host_id=host.id)
    boot = next((n for n in nics if n.boot), nics[0] if nics else None)
    return netspec.reachable_at(boot) if boot else None  # a static address is where the installed OS answers


def validate(session: Session, host: Host, profile: Profile | None, settings: Settings) -> list[str]:
    """Everything that can be checked before touching the host; raises InvalidInput naming the field."""
    if profile is None:
        raise InvalidInput(field="profile", reason=f"host {host.name} has no OS profile; give --profile")
    assert host.id is not None
    nics = crud.host_nics(session, host_id=host.id)
    if not any(n.boot for n in nics):
        raise InvalidInput(field="nics", reason=f"host {host.name} has no boot NIC (nics[].boot: true)")
    svc = power_svc.get_service(settings)
    svc.driver_factory(svc.spec_for(host)).validate()  # cheap: never touches the BMC
    if profile.install_method == "image":
        from provisioner.conductor import image_deploy

        # ramdisk kernel + initrd in the boot root, the image and its checksum
        image_deploy.check_boot_files(profile, settings)
    elif not (profile.kernel_url and profile.initrd_url):
        raise InvalidInput(field="profile.kernel_url", reason=f"profile {profile.name} needs kernel_url and "
                                                               "initrd_url for its installer")
    if _ssh_address(session, host) is None:
        raise InvalidInput(field="nics[].ip", reason=f"host {host.name} has no address to reach it after install "
                                                     "(set the boot NIC's ip or ip_address)")
    _render_check(session, host, settings)
    return [n.mac for n in nics if n.boot]


def _render_check(session: Session, host: Host, settings: Settings) -> None:
    """Render what the host will be served (boot script + install file) with a dummy token."""
    from provisioner.conductor.boot_context import boot_context

    nic = next(n for n in crud.host_nics(session, host_id=host.id or 0) if n.boot)
    ctx = boot_context(session, host, settings, token="0" * 43, mac=nic.mac)
    from provisioner import render

    render.render("ipxe/install.j2", ctx, settings)


# --------------------------------------------------------------------------- start
def start(session: Session, ident: str | int, req: InstallRequest, *, actor: str = "system",
          settings: Settings | None = None) -> Task:
    settings = settings or get_settings()
    host = crud.get_host(session, ident)
    profile = crud.get_profile(session, req.profile) if req.profile else (
        session.get(Profile, host.profile_id) if host.profile_id else None)
    allowed = lifecycle.TRANSITIONS.get((host.state, S.INSTALL))
    if allowed is None:
        lifecycle.target_of(host, S.INSTALL)  # raises the 409 with the allowed events
    validate(session, host, profile, settings)
    assert profile is not None and profile.id is not None and host.id is not None
    if host.profile_id != profile.id:
        host.profile_id = profile.id
        session.add(host)
    configure = req.configure if req.configure is not None else bool(profile.playbooks)
    lifecycle.advance(session, host, S.INSTALL, actor=actor, settings=settings,
                      message=f"install {profile.name} ({profile.install_method})")
    params: dict[str, Any] = {"profile": profile.name, "configure": configure, "actor": actor,
                              "playbooks": req.playbooks, "engine": req.engine,
                              # where the installed OS answers SSH (profiles of test rigs may move it)
                              "ssh_port": int((profile.params or {}).get("ssh_port", SSH_PORT))}
    try:
        return engine.submit("install", host_id=host.id, params=params, session=session, settings=settings)
    except Conflict as exc:
        # another workflow of this host is still finishing (deduplication): the host must not stay
        # installing with nothing driving it
        lifecycle.advance(session, host, S.FAIL, message=f"install not started: {exc.message}", actor=actor,
                          settings=settings)
        raise


# --------------------------------------------------------------------------- the workflow
def _host(ctx: TaskContext) -> Host:
    # Read every POLL by the wait loops: a busy database is waited out, not a crashed install.
    host = retry_transient(lambda: _read_host(ctx))
    if host is None:
        raise InstallFailed(reason=f"host {ctx.host_id} was deleted during the install")
    return host


def _read_host(ctx: TaskContext) -> Host | None:
    with ctx.session() as s:
        return s.get(Host, ctx.host_id)


def _fail(ctx: TaskContext, reason: str) -> None:
    """Move the host to install-failed (if it is still in an install state) and end the task.

    Whatever failed, netboot goes off and the token is revoked, so a failed host
    that reboots can never land in the installer again by itself.
    """
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        if host is not None:
            install_tokens.revoke(s, host, commit=False)
            host.netboot = False
            s.add(host)
            if host.state in (S.INSTALLING, S.INSTALL_WAIT, S.BOOTING):
                lifecycle.advance(s, host, S.FAIL, message=reason, actor="conductor:install",
                                  task_id=ctx.task_id, settings=ctx.settings)
            else:
                s.commit()
    from provisioner.conductor.install_callbacks import sync_dhcp

    sync_dhcp(ctx.host_id or 0, ctx.settings)
    raise InstallFailed(reason=reason)


# Steps that power the machine on relying on the boot device set by the step
# before them: resumed after a restart, that boot device is set again first.
# power-on: a BMC forgets a one-time PXE override when no restart follows
# within 60 s (IPMI 2.0, Set System Boot Options, boot flags parameter: the
# "valid" bit is cleared by a 60 s timer), and the outage may have been longer.
# (netboot-on is not redone: it would mint a new token and lock out an
# installer that already fetched its boot script.)
# first-boot: setting disk again is idempotent and cheap, and covers a BMC that
# was reset in the same outage (a power cut takes the controller and the rack).
_REDO_ON_RESUME = {"power-on": "boot-pxe", "first-boot": "boot-disk"}


def run(ctx: TaskContext) -> dict[str, Any]:
    """Run (or resume) the install; counted in prov_installs_total."""
    try:
        result = _run(ctx)
    except Fenced:
        raise  # another conductor carries on with this install: not an outcome
    except Exception as exc:
        prov_metrics.INSTALLS.labels("failed" if isinstance(exc, InstallFailed) else "error").inc()
        raise
    prov_metrics.INSTALLS.labels("succeeded").inc()
    return result


def _run(ctx: TaskContext) -> dict[str, Any]:
    """Every step is a DBOS step: a re-executed workflow (crash, take-over) skips the steps it
    recorded and runs the first unfinished one live, which is where it says it resumed."""
    actor = str(ctx.params.get("actor") or "conductor:install")
    for step in STEPS:
        try:
            engine.run_step(f"install.{step}", lambda step=step: _live_step(ctx, step, actor))  # type: ignore[misc]
        except engine.StepFailed as exc:
            raise InstallFailed(reason=exc.message) from None
    host = _host(ctx)
    return {"state": host.state, "ssh_host_key": bool(host.ssh_host_key)}


def _live_step(ctx: TaskContext, step: str, actor: str) -> None:
    redo = None
    if ctx.resumed and not ctx.announced:
        # The first step this execution runs of an install another execution began: a conductor
        # died (or was taken over) in it. Say so where the operator looks.
        ctx.announced = True
        redo = _REDO_ON_RESUME.get(step)
        ctx.history(f"install resumed at step {step} after a controller restart"
                    + (f" ({redo} is done again first: the boot device may not have survived the outage)"
                       if redo else ""),
                    event="install-resumed", actor="conductor:install")
    current = redo or step
    try:
        if redo:  # the persisted step stays where the install really is
            _STEP_FNS[redo](ctx, actor)
            current = step
        ctx.progress(_PROGRESS[step], step=step)
        started = time.monotonic()
        _STEP_FNS[step](ctx, actor)
        prov_metrics.INSTALL_PHASE.labels(step).observe(time.monotonic() - started)
    except (InstallFailed, Fenced):
        raise
    except TaskCancelled:
        # An operator's abort (or a task cancel) is seen at the next heartbeat: clean up
        # like any failure (token, netboot) and keep the operator's reason, not "cancelled".
        host = _host(ctx)
        # aborted: the abort's message is the host's last error; else the task itself was cancelled
        reason = host.last_error if host.state == S.INSTALL_FAILED else "the install task was cancelled"
        _fail(ctx, f"install aborted at step {current}: {reason or 'no reason given'}")
    except ProvError as exc:
        _fail(ctx, f"step {current} failed: {exc.message}")


def _step_power_off(ctx: TaskContext, actor: str) -> None:
    power_svc.power_action(ctx.host_id or 0, PowerAction.OFF, settings=ctx.settings, actor=actor,
                           task_id=ctx.task_id)


def _step_boot_pxe(ctx: TaskContext, actor: str) -> None:
    power_svc.set_boot_device(ctx.host_id or 0, BootSetting(BootDevice.PXE, persistent=False),
                              settings=ctx.settings, actor=actor, task_id=ctx.task_id)


def _step_netboot_on(ctx: TaskContext, actor: str) -> None:
    from provisioner.conductor.install_callbacks import sync_dhcp

    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        assert host is not None
        host.netboot = True
        s.add(host)
        # The one mint of this boot (commits): every boot-script fetch from here to done/fail renders
        # this same token again, and none replaces it (conductor/netboot.py).
        install_tokens.mint(s, host, ctx.settings)
    sync_dhcp(ctx.host_id or 0, ctx.settings)
    ctx.history("netboot on: this host's next network boot gets its installer", event="netboot-on")


def _step_power_on(ctx: TaskContext, actor: str) -> None:
    power_svc.power_action(ctx.host_id or 0, PowerAction.ON, settings=ctx.settings, actor=actor,
                           task_id=ctx.task_id)
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        assert host is not None
        if host.state == S.INSTALLING:
            lifecycle.advance(s, host, S.WAIT, message="powered on into network boot; waiting for the installer",
                              actor=actor, task_id=ctx.task_id, settings=ctx.settings)


def _wait_state(ctx: TaskContext, waiting: set[str], ok: set[str]) -> Host:
    """Poll until the host leaves ``waiting``; the state deadline (timeout checker) bounds the wait."""
    while True:
        host = _host(ctx)
        if host.state in ok:
            return host
        if host.state not in waiting:
            _fail(ctx, f"host is {host.state}: {host.last_error or 'install stopped'}")
        if ctx.cancelled:
            _fail(ctx, "install aborted by an operator")
        time.sleep(POLL)
        ctx.progress(None)  # heartbeat


def _step_wait_installer(ctx: TaskContext, actor: str) -> None:
    _wait_state(ctx, {S.INSTALL_WAIT, S.INSTALLING}, {S.BOOTING, S.CONFIGURING, S.ACTIVE})


def _step_boot_disk(ctx: TaskContext, actor: str) -> None:
    power_svc.set_boot_device(ctx.host_id or 0, BootSetting(BootDevice.DISK, persistent=True),
                              settings=ctx.settings, actor=actor, task_id=ctx.task_id)


def _step_first_boot(ctx: TaskContext, actor: str) -> None:
    """Installers reboot by themselves; one that powered off is switched on."""
    res = power_svc.get_power(ctx.host_id or 0, settings=ctx.settings, actor=actor)
    if res.power_state == PowerState.OFF:
        power_svc.power_action(ctx.host_id or 0, PowerAction.ON, settings=ctx.settings, actor=actor,
                               task_id=ctx.task_id)


def _step_wait_ssh(ctx: TaskContext, actor: str) -> None:
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        assert host is not None
        if host.state != S.BOOTING:
            return  # resumed after this step already moved on
        address = _ssh_address(s, host)
    if address is None:
        _fail(ctx, "no address to reach the host over SSH")
    port = int(ctx.params.get("ssh_port") or SSH_PORT)
    while True:
        if _ssh_banner(address or "", port):
            break
        host = _host(ctx)
        if host.state != S.BOOTING:
            _fail(ctx, f"host is {host.state}: {host.last_error or 'stopped waiting for SSH'} "
                       f"(no SSH banner on {address}:{port})")
        if ctx.cancelled:
            _fail(ctx, "install aborted by an operator")
        time.sleep(POLL)
        ctx.progress(None)
    key = _host_key(address or "", port)
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        assert host is not None
        host.ssh_host_key = key
        host.updated_at = utcnow()
        s.add(host)
        s.commit()
    ctx.history(f"SSH is up on {address}:{port}; host key recorded", event="ssh-up")


def _ssh_banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3) as sock:
            sock.settimeout(5)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _host_key(address: str, port: int) -> str | None:
    try:
        out = subprocess.run(["ssh-keyscan", "-T", "10", "-p", str(port), "-t", "ed25519,ecdsa,rsa", address],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln for ln in out.stdout.splitlines() if ln and not ln.startswith("#")]
    return "\n".join(lines) or None


def _step_configure(ctx: TaskContext, actor: str) -> None:
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        assert host is not None
        if host.state == S.BOOTING:
            if not ctx.params.get("configure"):
                return
            lifecycle.advance(s, host, S.CONFIGURE, message="installed; running configuration playbooks",
                              actor=actor, task_id=ctx.task_id, settings=ctx.settings)
        elif host.state != S.CONFIGURING:
            return  # resumed after this step already moved on (active, or failed by the timeout checker)
        # configuring: either just entered, or resumed after a controller died mid-playbook; the
        # playbooks are idempotent, so a resumed install runs them again from the start.
    from provisioner.conductor import configure

    configure.run_for_install(ctx, playbooks=ctx.params.get("playbooks"), engine=ctx.params.get("engine"))


def _step_done(ctx: TaskContext, actor: str) -> None:
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        assert host is not None
        if host.state == S.BOOTING:
            lifecycle.advance(s, host, S.DONE, message="installed; SSH up", actor=actor, task_id=ctx.task_id,
                              settings=ctx.settings)
        elif host.state != S.ACTIVE:
            raise InstallFailed(reason=f"host ended the install in {host.state}: {host.last_error or ''}".strip())


_STEP_FNS = {
    "power-off": _step_power_off,
    "boot-pxe": _step_boot_pxe,
    "netboot-on": _step_netboot_on,
    "power-on": _step_power_on,
    "wait-installer": _step_wait_installer,
    "boot-disk": _step_boot_disk,
    "first-boot": _step_first_boot,
    "wait-ssh": _step_wait_ssh,
    "configure": _step_configure,
    "done": _step_done,
}

engine.register("install", run, queue=engine.INSTALL_QUEUE, exclusive=True, resumable=True)


def retry(session: Session, ident: str | int, *, actor: str = "system", settings: Settings | None = None) -> Task:
    """install-failed → installing again, from the start (every step is idempotent)."""
    host = crud.get_host(session, ident)
    if host.state != S.INSTALL_FAILED:
        raise Conflict(reason=f"host {host.name} is {host.state}; retry is for install-failed hosts",
                       current_state=host.state)
    return start(session, ident, InstallRequest(), actor=actor, settings=settings)
