"""The configure workflow: run prov's playbooks on one host or a rack.

Hosts move only through ``lifecycle.advance``::

    available | active | configure-failed --configure--> configuring
    configuring --done--> active                 (every play ran, nothing failed)
    configuring --fail--> configure-failed       (message names the host and the failing task)
    configuring --abort--> configure-failed      (operator cancelled the task)

Everything is checked before any host moves (playbook names, engine, variable
names, every host's state), so a bad request changes nothing. Each Ansible
event becomes task progress and one host history line.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from provisioner import lifecycle
from provisioner import states as S
from provisioner.conductor import engine as workflows
from provisioner.conductor.inventory import build_inventory
from provisioner.conductor.tasks import TaskCancelled, TaskContext
from provisioner.drivers.config import ansible
from provisioner.drivers.config.base import FAILED, SKIPPED, UNREACHABLE, ConfigInterface, RunEvent, RunResult, RunSpec
from provisioner.errors import ConfigRunError, Conflict, InvalidInput, ProvError
from provisioner.models import Host, Profile, Task
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

KIND = "configure"

# The configuration engine every configure run goes through (tests put a drivers/config/fake.FakeConfig
# here). The playbook, engine and variable names are still checked by ansible.py's validators: they name
# prov's own playbooks, whichever engine runs them.
driver: ConfigInterface = ansible.AnsibleConfig()


@dataclass
class ConfigureRequest:
    playbooks: list[str] = field(default_factory=lambda: ["site"])
    engine: str = "docker"
    vars: dict[str, Any] = field(default_factory=dict)
    admin_keys: list[str] = field(default_factory=list)

    def validated(self) -> ConfigureRequest:
        keys = [k.strip() for k in self.admin_keys]
        for k in keys:
            if not k.startswith(("ssh-", "ecdsa-", "sk-")) or len(k.split()) < 2:
                raise InvalidInput(field="admin_keys", reason="each key must be an OpenSSH public key line")
        return ConfigureRequest(
            playbooks=ansible.validate_playbooks(self.playbooks),
            engine=ansible.validate_engine(self.engine),
            vars=ansible.validate_vars(self.vars),
            admin_keys=keys,
        )


def _check_states(hosts: list[Host]) -> None:
    if not hosts:
        raise InvalidInput(field="hosts", reason="no hosts to configure")
    for host in hosts:
        lifecycle.target_of(host, S.CONFIGURE)  # raises InvalidTransition (409) naming state + allowed events


def submit(
    session: Session,
    hosts: list[Host],
    request: ConfigureRequest,
    *,
    actor: str = "system",
    rack_id: int | None = None,
    settings: Settings | None = None,
) -> Task:
    """Validate, move every host to ``configuring`` and start the background task."""
    settings = settings or get_settings()
    req = request.validated()
    _check_states(hosts)
    moved: list[Host] = []
    what = f"playbooks {', '.join(req.playbooks)}" + (f", engine {req.engine}" if req.engine else "")
    try:
        for host in hosts:
            moved.append(lifecycle.advance(session, host, S.CONFIGURE, message=f"configure requested: {what}",
                                           actor=actor, settings=settings))
    except ProvError:
        for host in moved:  # someone else moved a host in between: undo ours, say why
            lifecycle.advance(session, host, S.FAIL, message="configure not started: another host of the "
                              "request changed state first", actor=actor, settings=settings)
        raise
    params = {
        "host_ids": [h.id for h in hosts],
        "playbooks": req.playbooks,
        "engine": req.engine,
        "vars": req.vars,
        "admin_keys": req.admin_keys,
        "actor": actor,
    }
    host_id = hosts[0].id if len(hosts) == 1 else None
    return workflows.submit(KIND, host_id=host_id, rack_id=rack_id, params=params, session=session,
                            settings=settings)


def run_configure(ctx: TaskContext) -> dict[str, Any]:
    """The task body of a configure task (see ``submit``)."""
    p = ctx.params
    return _execute(ctx, list(p["host_ids"]), playbooks=list(p["playbooks"]), engine=str(p["engine"]),
                    run_vars=dict(p.get("vars") or {}), admin_keys=list(p.get("admin_keys") or []))


def run_for_install(ctx: TaskContext, *, playbooks: list[str] | None = None, engine: str | None = None) -> None:
    """The install workflow's configure step: the host is already ``configuring``.

    Playbooks and engine default to the host's profile (``Profile.playbooks``,
    ``Profile.container_engine``), then to ``site`` with Docker.
    """
    if ctx.host_id is None:
        raise ConfigRunError(reason="install task has no host")
    with ctx.session() as s:
        host = s.get(Host, ctx.host_id)
        profile = s.get(Profile, host.profile_id) if host is not None and host.profile_id is not None else None
    names = ansible.validate_playbooks(list(playbooks or (profile.playbooks if profile else None) or ["site"]))
    eng = ansible.validate_engine(engine or (profile.container_engine if profile else None) or "docker")
    _execute(ctx, [ctx.host_id], playbooks=names, engine=eng, run_vars={}, admin_keys=[], within_workflow=True)


def _execute(
    ctx: TaskContext,
    host_ids: list[int],
    *,
    playbooks: list[str],
    engine: str,
    run_vars: dict[str, Any],
    admin_keys: list[str],
    within_workflow: bool = False,
) -> dict[str, Any]:
    """One ansible run over all the hosts, then one lifecycle transition per host.

    ``within_workflow``: the run is one step of another task (install's ``configure``).
    That task's ``step`` is what a restarted controller resumes from, so the run must
    not overwrite it with Ansible task names (an install killed mid-playbook would
    otherwise restart from power-off), nor move its progress; it only heartbeats.
    """
    settings = ctx.settings

    def report(pct: int, step: str, result: dict[str, Any] | None = None) -> None:
        if within_workflow:
            ctx.progress(None, result=result)
        else:
            ctx.progress(pct, step=step, result=result)

    with ctx.session() as s:
        hosts = [h for h in (s.get(Host, hid) for hid in host_ids) if h is not None]
        inventory = build_inventory(s, hosts)
    names = {h.id: h.name for h in hosts}
    by_name = {h.name: h.id for h in hosts}
    report(1, "starting ansible")
    key = driver.ensure_ssh_key(settings)
    prov = {
        "playbooks": playbooks,
        "engine": engine,
        "admin_user": settings.ansible_user,
        # the controller's own key first: it must still get in after root login is off
        "admin_keys": list(dict.fromkeys([driver.public_key(key), *admin_keys])),
        "task_id": ctx.task_id,
    }
    spec = RunSpec(
        playbooks=playbooks,
        inventory=inventory,
        prov=prov,
        run_vars=run_vars,
        user=settings.ansible_user,
        ssh_key=key,
        forks=settings.ansible_forks,
        timeout=settings.configure_timeout,
        label=f"task{ctx.task_id}",
    )
    started = {"n": 0}

    def on_event(ev: RunEvent) -> None:
        if ev.kind == "task_start":
            started["n"] += 1
            # task count is unknown up front: approach 95 % asymptotically
            n = started["n"]
            # a cancel is picked up by the runner's cancel callback, not by raising here
            with contextlib.suppress(TaskCancelled):
                report(min(95, 2 + 93 * n // (n + 25)), ev.task[:64])
            return
        if ev.kind == SKIPPED or ev.host is None:
            return
        line = f"ansible: {ev.kind}: {ev.task}"
        if ev.message:
            line += f": {ev.message}"
        if ev.ignored:
            line += " (ignored)"
        ctx.history(line, event=f"ansible-{ev.kind}", host_id=by_name.get(ev.host))

    error: ProvError | None = None
    result: RunResult | None = None
    try:
        result = driver.run(spec, settings, on_event=on_event, cancelled=lambda: ctx.cancelled)
    except ConfigRunError as exc:
        error = exc
    summary = result.to_dict() if result else {"status": "error", "hosts": {}, "failures": []}
    if error is not None:
        summary["error"] = error.message
    with contextlib.suppress(TaskCancelled):
        report(99, "recording results", summary)
    failed_hosts = _finish_hosts(ctx, hosts, result, error, names)
    if result is not None and result.status == "canceled":
        raise TaskCancelled(task_id=ctx.task_id)
    if error is not None:
        raise error
    assert result is not None
    if failed_hosts or not result.ok:
        raise ConfigRunError(reason=result.summary(), failures=result.failures, artifact_dir=result.artifact_dir)
    return summary


def _finish_hosts(
    ctx: TaskContext,
    hosts: list[Host],
    result: RunResult | None,
    error: ProvError | None,
    names: dict[int | None, str],
) -> list[str]:
    failed: list[str] = []
    with ctx.session() as s:
        for h in hosts:
            host = s.get(Host, h.id)
            if host is None or host.state != S.CONFIGURING:
                continue  # deleted or moved by an operator meanwhile: leave it alone
            hr = result.hosts.get(host.name) if result else None
            if result is not None and result.status == "canceled":
                event, msg = S.ABORT, "configure cancelled by operator"
            elif error is not None:
                event, msg = S.FAIL, f"configure failed before any task ran: {error.message}"
            elif hr is not None and hr.status in (FAILED, UNREACHABLE):
                what = "unreachable" if hr.status == UNREACHABLE else "failed"
                event, msg = S.FAIL, f"configure failed on {host.name}: task {hr.failed_task!r} {what}: {hr.message}"
            elif result is not None and result.status == "timeout":
                event, msg = S.TIMEOUT, f"configure timed out after {ctx.settings.configure_timeout:.0f} s"
            elif result is not None and not result.ok:
                event, msg = S.FAIL, f"configure failed: {result.summary()}"
            else:
                stats = f"ok={hr.ok} changed={hr.changed}" if hr else "no tasks"
                event, msg = S.DONE, f"configured ({stats})"
            if event != S.DONE:
                failed.append(host.name)
            try:
                lifecycle.advance(s, host, event, message=msg, actor="conductor", task_id=ctx.task_id,
                                  settings=ctx.settings)
            except Conflict as exc:  # an operator moved it in the meantime; the task result still says why
                log.warning("configure task %s: could not move %s: %s", ctx.task_id, host.name, exc.message)
    return failed


# not exclusive: the hosts' lifecycle compare-and-set (configuring) already excludes a second one
workflows.register(KIND, run_configure)
