"""KVM guests on a KVM host: create and delete as conductor tasks, the rest as quick calls.

Create: every check runs first, in the request (a fresh pre-flight verdict, nested,
free memory, duplicate name/MAC/volume, unknown pool/network), so a refused guest is a
4xx and no task; ``plan()`` stops there (the dry run). Then a ``guest-create`` task makes
it step by step (networks and pools made on demand, volumes, seed ISO, define, start)
with its progress on the task and history lines on the KVM host (when it is an enrolled
host; ``local`` has no history). The task plans again before it makes anything (the host
may have changed since the request) and rolls back what it made when a step fails or the
task is cancelled. Delete is a ``guest-delete`` task the same way. Start, stop, reboot,
list, show and the console tail are short libvirt calls answered directly.

The guest is not a prov host yet: its history is written on its KVM host, with the
guest's name in every message.
"""

from __future__ import annotations

from typing import Any

from provisioner.conductor import engine
from provisioner.conductor.tasks import TaskCancelled, TaskContext
from provisioner.conductor.virt import LOCAL, KvmHost, connect, kvm_host, open_uri
from provisioner.drivers.virt.base import CREATE_STEPS
from provisioner.drivers.virt.preflight import VirtReport
from provisioner.drivers.virt.spec import GuestSpec, NetworkSpec  # GuestSpec: the routes' request body
from provisioner.errors import ProvError
from provisioner.models import Event, Host, Task
from provisioner.secret_store import mask
from provisioner.settings import Settings

KIND_CREATE = "guest-create"
KIND_DELETE = "guest-delete"
ACTOR = "conductor"
# Progress (percent) when each create step begins; the task ends at 100.
_PCT = dict(zip(CREATE_STEPS, (15, 30, 50, 65, 85), strict=True))


def _auto(settings: Settings) -> tuple[dict[str, NetworkSpec], dict[str, str]]:
    """The controller's NAT network and directory pool, made on a KVM host when a guest names them."""
    nets = {settings.virt_network: NetworkSpec(settings.virt_network, subnet=settings.virt_network_subnet)}
    return nets, {settings.virt_pool: settings.virt_pool_dir}


def _where(host: str) -> str:
    return "the controller" if host == LOCAL else f"KVM host {host}"


# --------------------------------------------------------------------------- quick calls


def list_guests(settings: Settings, host: str) -> list[dict[str, Any]]:
    with connect(settings, host) as conn:
        return conn.list_guests()


def show(settings: Settings, host: str, name: str) -> dict[str, Any]:
    with connect(settings, host) as conn:
        return conn.guest_info(name)


def start(settings: Settings, host: str, name: str) -> dict[str, Any]:
    with connect(settings, host) as conn:
        conn.start(name)
        return {"name": name, "state": conn.state(name)}


def stop(settings: Settings, host: str, name: str, *, timeout: float = 60.0, force: bool = False) -> dict[str, Any]:
    """ACPI shutdown, destroyed after ``timeout`` s (``force``: destroyed at once)."""
    with connect(settings, host) as conn:
        if force:
            conn.destroy(name)
            how = "destroyed"
        else:
            how = conn.shutdown(name, timeout=timeout)
        return {"name": name, "stopped": how, "state": conn.state(name)}


def reboot(settings: Settings, host: str, name: str) -> dict[str, Any]:
    with connect(settings, host) as conn:
        conn.reboot(name)
        return {"name": name, "state": conn.state(name)}


def console_tail(settings: Settings, host: str, name: str, lines: int = 50) -> dict[str, Any]:
    with connect(settings, host) as conn:
        return {"name": name, "lines": conn.console_tail(name, max(1, min(lines, 5000)))}


# --------------------------------------------------------------------------- create


def _checked(settings: Settings, target: KvmHost, spec: GuestSpec) -> tuple[VirtReport, dict[str, Any]]:
    """A fresh verdict and every check (raises the 4xx); no side effect."""
    nets, pools = _auto(settings)
    with connect(settings, target) as conn:
        # Always a fresh verdict: a stored report may predate a BIOS or kernel module change.
        report = conn.preflight()
        return report, conn.plan_guest(spec, report, auto_networks=nets, auto_pools=pools).to_dict()


def plan(settings: Settings, host: str, spec: GuestSpec) -> dict[str, Any]:
    """The dry run: every check, then the domain XML and what would be made."""
    report, planned = _checked(settings, kvm_host(settings, host), spec)
    return {"dry_run": True, "verdict": report.overall, **planned}


def submit_create(settings: Settings, host: str, spec: GuestSpec, *, start: bool = True,
                  actor: str = "system") -> Task:
    """Check everything, then queue the ``guest-create`` task (returned as persisted, pending)."""
    target = kvm_host(settings, host)
    report, planned = _checked(settings, target, spec)
    # The spec and the verdict the checks passed with reach the task in memory: the seed's user-data
    # may hold credentials, so the persisted params (shown by the tasks API) say only that there is one.
    shown = {**spec.model_dump(mode="json", exclude={"seed"}), "seed": spec.seed is not None}
    params = {"host": target.name, "uri": target.uri, "guest": spec.name, "spec": shown, "start": start,
              "actor": actor, "verdict": report.overall, "warnings": planned["warnings"]}
    # The whole spec (seed included) and the verdict travel as the workflow's private input,
    # encrypted with the controller's key (engine.submit), not in the task's public params.
    private = {"spec": spec.model_dump(mode="json"), "report": report.to_dict()}
    return engine.submit(KIND_CREATE, host_id=target.host_id, params=params, private=private, settings=settings)


def run_create(ctx: TaskContext) -> dict[str, Any]:
    """The body of a ``guest-create`` task (see ``submit_create``)."""
    p = ctx.params
    spec = GuestSpec.model_validate(ctx.private["spec"])
    report = VirtReport.from_dict(ctx.private["report"])
    name, where = spec.name, _where(str(p["host"]))
    _history(ctx, f"guest {name}: create requested on {where} ({spec.virt_type}, {spec.memory_mib} MiB, "
                  f"{spec.vcpus} vCPU; verdict {report.overall})", event="guest-create", actor=str(p["actor"]))

    def on_step(step: str) -> None:
        ctx.progress(_PCT.get(step), step=step)  # raises TaskCancelled: the driver rolls back what it made

    ctx.progress(5, step="connecting")
    nets, pools = _auto(ctx.settings)
    try:
        with open_uri(str(p["uri"]), ctx.settings) as conn:
            info = conn.create_guest(spec, report, start=bool(p.get("start", True)), auto_networks=nets,
                                     auto_pools=pools, on_step=on_step)
    except TaskCancelled:
        _history(ctx, f"guest {name}: create cancelled; what was made is removed", event="guest-create-cancelled")
        raise
    except ProvError as exc:
        _failed(ctx, exc)
        _history(ctx, f"guest {name}: create failed: {exc.message}", event="guest-create-failed")
        raise
    macs = ", ".join(f"{n.get('mac')}" + (f"={n['ip']}" if n.get("ip") else "") for n in info.get("nics", []))
    _history(ctx, f"guest {name}: created on {where}, {info.get('state')}" + (f" ({macs})" if macs else ""),
             event="guest-created")
    return {"dry_run": False, "verdict": report.overall, **info}


# --------------------------------------------------------------------------- delete


def submit_delete(settings: Settings, host: str, name: str, *, volumes: bool = True, actor: str = "system") -> Task:
    """Queue the ``guest-delete`` task; an unknown guest is a 404 here, not a failed task."""
    target = kvm_host(settings, host)
    with connect(settings, target) as conn:
        conn.state(name)  # NotFound when there is no such guest
    params = {"host": target.name, "uri": target.uri, "guest": name, "volumes": volumes, "actor": actor}
    return engine.submit(KIND_DELETE, host_id=target.host_id, params=params, settings=settings)


def run_delete(ctx: TaskContext) -> dict[str, Any]:
    """The body of a ``guest-delete`` task: destroy, undefine, volumes (unless kept), DHCP reservations."""
    p = ctx.params
    name = str(p["guest"])
    keep = "" if p.get("volumes", True) else ", volumes kept"
    _history(ctx, f"guest {name}: delete requested{keep}", event="guest-delete", actor=str(p["actor"]))
    ctx.progress(10, step="deleting")
    try:
        with open_uri(str(p["uri"]), ctx.settings) as conn:
            out = conn.delete_guest(name, volumes=bool(p.get("volumes", True)))
    except ProvError as exc:
        _failed(ctx, exc)
        _history(ctx, f"guest {name}: delete failed: {exc.message}", event="guest-delete-failed")
        raise
    _history(ctx, f"guest {name}: deleted ({len(out['volumes_deleted'])} volume(s), "
                  f"{len(out['reservations_released'])} reservation(s) released)", event="guest-deleted")
    return out


# --------------------------------------------------------------------------- task helpers


def _failed(ctx: TaskContext, exc: ProvError) -> None:
    """Keep the error's code and details on the task: the task row's ``error`` holds the message only."""
    with ctx.session() as s:
        task = s.get(Task, ctx.task_id)
        if task is not None:
            task.result = {**(task.result or {}), "error": {**exc.to_dict(), "message": mask(exc.message)}}
            s.add(task)
            s.commit()


def _history(ctx: TaskContext, message: str, *, event: str, actor: str = ACTOR) -> None:
    """A history line on the KVM host (none for ``local``, nor when the host was deleted meanwhile)."""
    if ctx.host_id is None:
        return
    with ctx.session() as s:
        if s.get(Host, ctx.host_id) is None:
            return
        s.add(Event(host_id=ctx.host_id, event=event, message=mask(message), actor=actor, task_id=ctx.task_id))
        s.commit()


engine.register(KIND_CREATE, run_create)
engine.register(KIND_DELETE, run_delete)
