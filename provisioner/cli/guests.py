"""``prov vm create|list|show|start|stop|rm|console``: KVM guests through the REST API.

``--host`` names the KVM host (an enrolled host, or ``local`` for the
controller's own libvirt). ``create --dry-run`` runs every check (pre-flight
verdict, nested, free memory, duplicate name/MAC, unknown pool/network) and
prints the domain XML without defining anything. ``create`` and ``rm`` are
controller tasks: by default the command follows the task (its steps on stderr)
and prints the guest, or what was deleted; ``--no-wait`` prints the task.
"""

from __future__ import annotations

import enum
import sys
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import vm_app
from provisioner.cli.output import (
    Columns,
    NoHeadersOpt,
    OutputFormat,
    OutputOpt,
    YesOpt,
    client,
    confirm,
    emit,
    fail,
    handle_errors,
    stderr_console,
)
from provisioner.client import ProvClient
from provisioner.errors import InvalidInput, ProvError

GUEST_COLUMNS = Columns(table=("name", "state", "virt_type", "vcpus", "memory_mib", "macs", "managed"),
                        drop=("managed", "virt_type", "vcpus", "memory_mib"))
HostOpt = typer.Option("local", "--host", "-H", help="KVM host: an enrolled host or 'local' (the controller)")
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the controller's task until it ends "
                                                             "(--no-wait: print the task and return)")]
GuestArg = Annotated[str, typer.Argument(help="guest (libvirt domain) name")]
TASK_COLUMNS = ["id", "kind", "status", "step", "link"]
_DONE = {"succeeded", "failed", "cancelled"}


class VirtTypeOpt(enum.StrEnum):
    kvm = "kvm"
    qemu = "qemu"


class CpuModeOpt(enum.StrEnum):
    host_passthrough = "host-passthrough"
    host_model = "host-model"
    maximum = "maximum"


class FirmwareOpt(enum.StrEnum):
    bios = "bios"
    uefi = "uefi"


class BusOpt(enum.StrEnum):
    virtio_blk = "virtio-blk"
    virtio_scsi = "virtio-scsi"


def _path(host: str, *rest: str) -> str:
    return "/".join([f"/api/v1/hosts/{quote(host, safe='')}/guests", *(quote(r, safe='') for r in rest)])


def _error_class(code: str, base: type[ProvError] = ProvError) -> type[ProvError]:
    for sub in base.__subclasses__():
        if sub.code == code:
            return sub
        found = _error_class(code, sub)
        if found is not ProvError:
            return found
    return ProvError


def _task_error(task: dict[str, Any]) -> ProvError:
    """A failed task's error as its ProvError class (the task keeps the code in ``result.error``)."""
    body = dict((task.get("result") or {}).get("error") or {})
    message = task.get("error") or body.get("message") or f"task {task['id']} {task['status']}"
    cls = _error_class(str(body.pop("error", ""))) if task["status"] == "failed" else ProvError
    body.pop("message", None)
    return cls(str(message), **body)


def _follow(c: ProvClient, task: dict[str, Any], label: str, output: OutputFormat,
            timeout: float = 3600.0) -> dict[str, Any]:
    """Poll the task until it ends (quickly at first: most guest tasks take a second or two)."""
    deadline, pause, last = time.monotonic() + timeout, 0.1, ""
    while task["status"] not in _DONE and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(1.0, pause * 2)
        task = c.get(str(task.get("link") or f"/api/v1/tasks/{task['id']}"))
        line = f"{label}: {task['step'] or task['status']} ({task['progress']}%)"
        if output == OutputFormat.table and line != last and task["status"] not in _DONE:
            stderr_console().print(line, markup=False, highlight=False)
            last = line
    if task["status"] not in _DONE:
        raise fail(f"task {task['id']} still {task['status']} after {timeout:.0f} s (prov task show {task['id']})",
                   exitcodes.TIMEOUT)
    if task["status"] != "succeeded":
        raise _task_error(task)
    return dict(task.get("result") or {})


def _run_task(method: str, path: str, label: str, wait: bool, output: OutputFormat,
              **kwargs: Any) -> dict[str, Any] | None:
    """Start a guest task; None with ``--no-wait`` (the task was printed), else the task's result."""
    with client() as c:
        task = c.request(method, path, **kwargs)
        if not wait:
            emit(task, output, columns=TASK_COLUMNS)
            return None
        return _follow(c, task, label, output)


def build_spec(
    name: str, *, memory: int, vcpus: int, virt_type: str, cpu_mode: str | None, firmware: str,
    disk_size: float | None, disk_bus: str, pool: str | None, backing: str | None, network: str | None,
    bridge: str | None, mac: str | None, ip: str | None, nested: bool, kernel: str | None, initrd: str | None,
    cmdline: str, boot: list[str] | None, console_log: str | None,
    user_data: str | None = None, network_config: str | None = None,
) -> dict[str, Any]:
    """The request body (a GuestSpec) from the command-line options."""
    spec: dict[str, Any] = {"name": name, "memory_mib": memory, "vcpus": vcpus, "virt_type": virt_type,
                            "firmware": firmware, "nested": nested}
    if cpu_mode:
        spec["cpu_mode"] = cpu_mode
    if disk_size:
        disk: dict[str, Any] = {"size_gib": disk_size, "bus": disk_bus}
        if pool:
            disk["pool"] = pool
        if backing:
            disk["backing_image"] = backing
        spec["disks"] = [disk]
    if bridge and network:
        raise InvalidInput(field="--network/--bridge", reason="give one of them")
    # neither: the KVM host's default network (the controller's virt_network, created on demand)
    nic: dict[str, Any] = {"bridge": bridge} if bridge else ({"network": network} if network else {})
    if mac:
        nic["mac"] = mac
    if ip:
        nic["ip"] = ip
    spec["nics"] = [nic]
    if kernel:
        spec["direct_boot"] = {"kernel": kernel, "initrd": initrd, "cmdline": cmdline}
    if boot:
        spec["boot"] = boot
    if console_log:
        spec["console_log"] = console_log
    if user_data is not None or network_config is not None:
        seed: dict[str, Any] = {}
        if user_data is not None:
            seed["user_data"] = user_data
        if network_config is not None:
            seed["network_config"] = network_config
        spec["seed"] = seed
    return spec


@vm_app.command("create")
@handle_errors
def create(
    name: GuestArg,
    memory: Annotated[int, typer.Option("--memory", "-m", help="MiB")] = 512,
    vcpus: Annotated[int, typer.Option("--vcpus", "-c", help="virtual CPUs")] = 1,
    virt_type: Annotated[VirtTypeOpt, typer.Option("--virt-type", help="kvm, or qemu (TCG) explicitly")] = (
        VirtTypeOpt.kvm
    ),
    host: str = HostOpt,
    cpu_mode: Annotated[CpuModeOpt | None, typer.Option("--cpu-mode", help="CPU model (default: libvirt's)")] = None,
    firmware: Annotated[FirmwareOpt, typer.Option("--firmware", help="firmware the guest boots")] = FirmwareOpt.bios,
    disk_size: Annotated[float | None, typer.Option("--disk-size", help="GiB (no disk when omitted)")] = None,
    disk_bus: Annotated[BusOpt, typer.Option("--disk-bus", help="how the disk is attached")] = BusOpt.virtio_blk,
    pool: Annotated[str | None, typer.Option("--pool", help="storage pool (default: the controller's)")] = None,
    backing: Annotated[str | None, typer.Option("--backing", help="backing image volume or path")] = None,
    network: Annotated[str | None, typer.Option("--network", "-n", help="libvirt network (default: host's)")] = None,
    bridge: Annotated[str | None, typer.Option("--bridge", help="host bridge instead of a network")] = None,
    mac: Annotated[str | None, typer.Option("--mac", help="fixed MAC (reserved in the network's DHCP)")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="reserved address (default: the next free one)")] = None,
    nested: Annotated[bool, typer.Option("--nested", help="expose VT-x/AMD-V to the guest")] = False,
    kernel: Annotated[str | None, typer.Option("--kernel", help="direct kernel boot")] = None,
    initrd: Annotated[str | None, typer.Option("--initrd", help="initrd for direct kernel boot")] = None,
    cmdline: Annotated[str, typer.Option("--cmdline", help="kernel command line for direct kernel boot")] = (
        "console=ttyS0"
    ),
    boot: Annotated[list[str] | None, typer.Option("--boot", help="hd, network, cdrom (repeat for order)")] = None,
    console_log: Annotated[str | None, typer.Option("--console-log", help="serial log file on the KVM host")] = None,
    user_data: Annotated[Path | None, typer.Option("--user-data", help="cloud-init user-data file (NoCloud seed)",
                                                   exists=True, dir_okay=False)] = None,
    network_config: Annotated[Path | None, typer.Option("--network-config", help="cloud-init network-config file",
                                                        exists=True, dir_okay=False)] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="define only")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="run every check, print the XML, define nothing")] = False,
    wait: WaitOpt = True,
    output: OutputFormat = OutputOpt,
) -> None:
    """Create (and start) a guest."""
    spec = build_spec(
        name, memory=memory, vcpus=vcpus, virt_type=virt_type.value, cpu_mode=cpu_mode.value if cpu_mode else None,
        firmware=firmware.value, disk_size=disk_size, disk_bus=disk_bus.value, pool=pool, backing=backing,
        network=network, bridge=bridge, mac=mac, ip=ip, nested=nested, kernel=kernel, initrd=initrd,
        cmdline=cmdline, boot=boot, console_log=console_log,
        user_data=user_data.read_text() if user_data else None,
        network_config=network_config.read_text() if network_config else None,
    )
    params = {"dry_run": str(dry_run).lower(), "start": str(not no_start).lower()}
    if dry_run:
        with client() as c:
            data = c.post(_path(host), json=spec, params=params)
        if output == OutputFormat.table:
            sys.stdout.write(data["xml"])
            for w in data.get("warnings", []):
                typer.echo(f"warning: {w}")
        else:
            emit(data, output)
        return
    result = _run_task("POST", _path(host), name, wait, output, json=spec, params=params)
    if result is not None:
        emit(_row(result) if output.tabular else result, output, columns=GUEST_COLUMNS if output.tabular else None)


def _row(g: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": g.get("name"), "state": g.get("state"), "virt_type": g.get("virt_type"), "vcpus": g.get("vcpus"),
        "memory_mib": g.get("memory_mib"),
        "macs": [f"{n.get('mac')}" + (f"={n['ip']}" if n.get("ip") else "") for n in g.get("nics", [])],
        "managed": g.get("managed"),
    }


@vm_app.command("list")
@handle_errors
def list_(host: str = HostOpt, output: OutputFormat = OutputOpt, no_headers: NoHeadersOpt = False) -> None:
    """Guests on a KVM host."""
    data = client().request("GET", _path(host))
    rows = data["data"]
    emit([_row(g) for g in rows] if output.tabular else rows, output, columns=GUEST_COLUMNS, headers=not no_headers)


@vm_app.command("show")
@handle_errors
def show(name: GuestArg, host: str = HostOpt, output: OutputFormat = OutputOpt) -> None:
    """One guest: state, devices, addresses, console log file."""
    emit(client().request("GET", _path(host, name)), output)


@vm_app.command("start")
@handle_errors
def start(name: GuestArg, host: str = HostOpt, output: OutputFormat = OutputOpt) -> None:
    """Start a defined guest."""
    emit(client().request("POST", _path(host, name, "start")), output)


@vm_app.command("stop")
@handle_errors
def stop(
    name: GuestArg,
    host: str = HostOpt,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds of ACPI shutdown before destroy")] = 60.0,
    force: Annotated[bool, typer.Option("--force", help="destroy at once")] = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Graceful shutdown, then destroy after --timeout."""
    emit(client().request("POST", _path(host, name, "stop"), json={"timeout": timeout, "force": force}), output)


@vm_app.command("reboot")
@handle_errors
def reboot(name: GuestArg, host: str = HostOpt, output: OutputFormat = OutputOpt) -> None:
    """Reboot a running guest (ACPI)."""
    emit(client().request("POST", _path(host, name, "reboot")), output)


@vm_app.command("rm")
@handle_errors
def rm(
    name: GuestArg,
    host: str = HostOpt,
    keep_volumes: Annotated[bool, typer.Option("--keep-volumes", help="keep the guest's disk volumes")] = False,
    wait: WaitOpt = True,
    yes: YesOpt = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Destroy and undefine a guest, deleting its volumes and DHCP reservations."""
    confirm(f"Delete guest {name} on {host}" + ("?" if keep_volumes else " and its disks?"), yes)
    params = {"volumes": str(not keep_volumes).lower()}
    result = _run_task("DELETE", _path(host, name), name, wait, output, params=params)
    if result is not None:
        emit(result, output)


@vm_app.command("console")
@handle_errors
def console_(
    name: GuestArg,
    host: str = HostOpt,
    lines: Annotated[int, typer.Option("--lines", "-n", help="how many of the last lines")] = 50,
) -> None:
    """The tail of the guest's serial console log."""
    data = client().request("GET", _path(host, name, "console"), params={"lines": lines})
    sys.stdout.write("".join(line + "\n" for line in data["lines"]))
