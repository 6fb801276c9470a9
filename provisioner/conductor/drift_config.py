"""Config drift: run each host's configuration playbooks in Ansible check mode.

A host of the last applied inventory that is ``active`` got its playbooks; if
someone changed its configuration by hand since, a check-mode run
(``--check --diff``: modules only say what they would change) reports those
tasks as "changed". Each such host is drift ``config`` naming the tasks; a host
the run could not check (unreachable, a task failed) is drift ``config-unknown``.
Nothing on the targets changes, and no host changes lifecycle state.

Playbooks and engine per host are the ones apply would configure it with: the
inventory host's own, else its inventory profile's, else the controller
profile's, else ``site`` with Docker (as in conductor/configure.py). Hosts with
the same playbooks and engine share one ansible run.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, col, select

from provisioner import states as S
from provisioner.conductor import applied
from provisioner.conductor import engine as workflows
from provisioner.conductor.inventory import build_inventory
from provisioner.conductor.tasks import TaskContext
from provisioner.drivers.config import ansible
from provisioner.errors import ConfigRunError, InvalidInput, ProvError
from provisioner.gitops import drift as drift_mod
from provisioner.models import Host, Profile, Task
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

KIND = "drift-config"
ACTOR = "conductor:drift"
# Names listed in one drift detail / history line; the task result keeps them all.
_SHOW = 8


Groups = dict[tuple[tuple[str, ...], str], list[int]]


def targets(session: Session, only: list[str] | None = None) -> Groups:
    """(playbooks, engine) -> ids of the active hosts of the applied inventory to check."""
    return _targets(session, only)[0]


def _targets(session: Session, only: list[str] | None) -> tuple[Groups, list[str]]:
    """The groups to check, and every host of the applied inventory they were chosen from."""
    row = applied.latest(session)
    inv = drift_mod.inventory_from_applied({"document": row.document}) if row is not None else None
    if inv is None:
        raise InvalidInput(field="inventory", reason="nothing applied yet: no configuration to check against")
    names = [n for n in sorted(inv.hosts) if inv.hosts[n].state != "absent"]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise InvalidInput(field="hosts", reason=f"not in the applied inventory: {', '.join(unknown)}")
        names = [n for n in names if n in set(only)]
    hosts = session.exec(select(Host).where(col(Host.name).in_(names), Host.state == S.ACTIVE)).all()
    profiles = {p.id: p for p in session.exec(select(Profile)).all()}
    groups: Groups = {}
    for host in sorted(hosts, key=lambda h: h.name):
        h = inv.hosts[host.name]
        inv_prof = inv.profiles.get(h.profile or "")
        db_prof = profiles.get(host.profile_id) if host.profile_id is not None else None
        playbooks = h.playbooks if h.playbooks is not None else (
            inv_prof.playbooks if inv_prof else (db_prof.playbooks if db_prof else None))
        engine = h.engine or (inv_prof.container_engine if inv_prof else None) or (
            db_prof.container_engine if db_prof else None) or "docker"
        key = (tuple(ansible.validate_playbooks(list(playbooks or ["site"]))), ansible.validate_engine(engine))
        assert host.id is not None
        groups.setdefault(key, []).append(host.id)
    return groups, names


def submit(session: Session, *, hosts: list[str] | None = None, actor: str = "system",
           settings: Settings | None = None) -> Task:
    """Check the request now (nothing applied, unknown hosts: 400) and start the background task."""
    settings = settings or get_settings()
    targets(session, hosts)
    return workflows.submit(KIND, params={"hosts": hosts or [], "actor": actor}, settings=settings,
                            session=session)


def _detail(tasks: list[str]) -> str:
    shown = ", ".join(repr(t) for t in tasks[:_SHOW])
    more = f" (+{len(tasks) - _SHOW} more)" if len(tasks) > _SHOW else ""
    return f"{len(tasks)} task(s) would change: {shown}{more}"


def check_group(settings: Settings, session: Session, host_ids: list[int], playbooks: list[str], engine: str,
                *, label: str = "drift", cancelled: Any = None) -> dict[str, dict[str, Any]]:
    """One check-mode run; host name -> {status, changed, changed_tasks, message}."""
    hosts = [h for h in (session.get(Host, hid) for hid in host_ids) if h is not None]
    inventory = build_inventory(session, hosts)
    key = ansible.ensure_ssh_key(settings)
    prov = {"playbooks": playbooks, "engine": engine, "admin_user": settings.ansible_user,
            "admin_keys": [ansible.public_key(key)], "check_mode": True}
    changed: dict[str, list[str]] = {h.name: [] for h in hosts}

    def on_event(ev: ansible.RunEvent) -> None:
        if ev.kind == ansible.CHANGED and ev.host in changed and ev.task not in changed[ev.host]:
            changed[ev.host].append(ev.task)

    spec = ansible.RunSpec(playbooks=playbooks, inventory=inventory, prov=prov, user=settings.ansible_user,
                           ssh_key=key, forks=settings.ansible_forks, timeout=settings.configure_timeout,
                           label=label, check=True)
    out: dict[str, dict[str, Any]] = {}
    try:
        result = ansible.run(spec, settings, on_event=on_event, cancelled=cancelled)
    except ConfigRunError as exc:
        return {h.name: {"status": "error", "changed": 0, "changed_tasks": [], "message": exc.message}
                for h in hosts}
    for h in hosts:
        hr = result.hosts.get(h.name)
        status = hr.status if hr else "error"
        message = (hr.message or "") if hr else result.summary()
        if hr and hr.failed_task:
            message = f"task {hr.failed_task!r}: {message}"
        out[h.name] = {"status": status, "changed": hr.changed if hr else 0, "changed_tasks": changed[h.name],
                       "message": message, "artifact_dir": result.artifact_dir}
    return out


def to_drift(results: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for name, r in sorted(results.items()):
        if r["status"] in (ansible.FAILED, ansible.UNREACHABLE, "error"):
            out.append({"object": f"host/{name}", "kind": "config-unknown",
                        "detail": f"check mode could not finish ({r['status']}): {r.get('message') or ''}"[:400]})
        elif r["changed"]:
            tasks = list(r["changed_tasks"]) or [f"{r['changed']} unnamed task(s)"]
            out.append({"object": f"host/{name}", "kind": "config", "detail": _detail(tasks)})
    return out


def run_check(ctx: TaskContext) -> dict[str, Any]:
    """The task body: one check-mode run per (playbooks, engine) group, then the drift list."""
    results: dict[str, dict[str, Any]] = {}
    with ctx.session() as s:
        groups, names = _targets(s, list(ctx.params.get("hosts") or []) or None)
        ids = {h.name: h.id for h in s.exec(select(Host)).all()}
    total = sum(len(v) for v in groups.values())
    ctx.progress(1, step=f"checking {total} active host(s) in check mode")
    for i, ((playbooks, engine), host_ids) in enumerate(sorted(groups.items())):
        with ctx.session() as s:
            try:
                results.update(check_group(ctx.settings, s, host_ids, list(playbooks), engine,
                                           label=f"task{ctx.task_id}-check", cancelled=lambda: ctx.cancelled))
            except ProvError as exc:
                for hid in host_ids:
                    h = s.get(Host, hid)
                    if h is not None:
                        results[h.name] = {"status": "error", "changed": 0, "changed_tasks": [],
                                           "message": exc.message}
        ctx.progress(min(95, 5 + 90 * (i + 1) // max(1, len(groups))), step=f"checked {len(results)}/{total}")
    drift = to_drift(results)
    for d in drift:
        name = d["object"].split("/", 1)[1]
        ctx.history(f"drift: {d['kind']}: {d['detail']}", event="drift", host_id=ids.get(name), actor=ACTOR)
    # Hosts of the inventory that are not active are not checked (nothing configured them yet, or
    # they failed): named, so "0 checked" is never read as "no drift".
    summary = {"checked": sorted(results), "not_active": [n for n in names if n not in results],
               "drift": drift, "hosts": results}
    return summary


workflows.register(KIND, run_check)
