"""``prov host power|bootdev|verify`` and ``prov rack power``: BMC actions through the REST API.

Every command exits non-zero when any host failed, so scripts can rely on it.
A command that waits on a BMC for longer than ``PROGRESS_AFTER`` shows a one-line
spinner with the elapsed time on stderr when stderr is a terminal (never in pipes
or logs): a silent BMC costs its whole deadline, times the retries.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import host_app, rack_app
from provisioner.cli.output import OutputFormat, OutputOpt, YesOpt, client, confirm, emit, handle_errors, stderr_console
from provisioner.client import ProvClient
from provisioner.errors import ProvError

RESULT_COLUMNS = ["host", "action", "ok", "power_state", "error", "message", "attempts", "seconds"]
# How often the CLI asks for a rack task's progress.
POLL_INTERVAL = 0.5
# A BMC call that takes longer than this gets the spinner (a healthy one answers well before).
PROGRESS_AFTER = 0.5
_FRAMES = "|/-\\"


class HostPowerVerb(enum.StrEnum):
    on = "on"
    off = "off"
    soft_off = "soft-off"
    cycle = "cycle"
    reset = "reset"
    status = "status"


class RackPowerVerb(enum.StrEnum):
    status = "status"
    on = "on"
    off = "off"
    soft_off = "soft-off"
    cycle = "cycle"


class BootDev(enum.StrEnum):
    pxe = "pxe"
    disk = "disk"
    cdrom = "cdrom"
    bios = "bios"
    default = "default"


def _host(name: str, *rest: str) -> str:
    return "/".join([f"/api/v1/hosts/{quote(name, safe='')}", *rest])


def _rack(name: str, *rest: str) -> str:
    return "/".join([f"/api/v1/racks/{quote(name, safe='')}", *rest])


def _finish(rows: list[dict[str, Any]], output: OutputFormat, title: str | None = None) -> None:
    emit(rows, output, columns=RESULT_COLUMNS if output == OutputFormat.table else None, title=title)
    failed = [r for r in rows if not r.get("ok")]
    if failed:
        stderr_console().print(f"{len(failed)} of {len(rows)} host(s) failed", highlight=False)
        raise typer.Exit(exitcodes.PEER)


@contextlib.contextmanager
def waiting(label: str) -> Iterator[None]:
    """'| power status n0: waiting for the BMC 1.3s' on stderr while the block runs (TTY only)."""
    stream = sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        yield
        return
    done = threading.Event()
    t0 = time.monotonic()

    def spin() -> None:
        if done.wait(PROGRESS_AFTER):
            return
        i = 0
        while True:
            stream.write(f"\r{_FRAMES[i % len(_FRAMES)]} {label}: waiting for the BMC {time.monotonic() - t0:.1f}s")
            stream.flush()
            i += 1
            if done.wait(0.1):
                break
        stream.write("\r\033[K")  # leave the line as it was: the result follows
        stream.flush()

    spinner = threading.Thread(target=spin, name="prov-cli-spinner", daemon=True)
    spinner.start()
    try:
        yield
    finally:
        done.set()
        spinner.join()


def _one(c: ProvClient, name: str, fn: Any, label: str = "") -> dict[str, Any]:
    try:
        with waiting(f"{label} {name}".strip()):
            return dict(fn(c, name))
    except ProvError as exc:  # e.g. unknown host: a failed row, not an abort of the others
        return {"host": name, "ok": False, "error": exc.code, "message": exc.message}


@host_app.command("power")
@handle_errors
def host_power(
    action: Annotated[HostPowerVerb, typer.Argument(help="on, off, soft-off, cycle, reset or status")],
    names: Annotated[list[str], typer.Argument(help="host names or ids")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="do not wait for the BMC to confirm")] = False,
    yes: YesOpt = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Power hosts on/off/cycle, or show their power state (asks the BMC now)."""
    if action not in (HostPowerVerb.on, HostPowerVerb.status):  # a person is asked; a script goes on
        confirm(f"Power {action.value} {', '.join(names)}?", yes, refuse_off_terminal=False)
    with client() as c:
        if action == HostPowerVerb.status:
            rows = [_one(c, n, lambda cl, n: cl.get(_host(n, "power")), "power status") for n in names]
        else:
            body = {"action": action.value, "wait": not no_wait}
            rows = [_one(c, n, lambda cl, n: cl.post(_host(n, "power"), json=body), f"power {action.value}")
                    for n in names]
    _finish(rows, output)


@host_app.command("bootdev")
@handle_errors
def host_bootdev(
    device: Annotated[BootDev, typer.Argument(help="pxe, disk, cdrom, bios or default")],
    names: Annotated[list[str], typer.Argument(help="host names or ids")],
    persistent: Annotated[bool, typer.Option("--persistent", help="keep it for every boot, not just the next")]
    = False,
    uefi: Annotated[bool, typer.Option("--uefi", help="request UEFI boot (default: legacy BIOS)")] = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Set the boot device (once by default)."""
    body = {"device": device.value, "persistent": persistent, "uefi": uefi}
    with client() as c:
        rows = [_one(c, n, lambda cl, n: cl.put(_host(n, "boot-device"), json=body), f"bootdev {device.value}")
                for n in names]
    _finish(rows, output)


@host_app.command("verify")
@handle_errors
def host_verify(
    names: Annotated[list[str], typer.Argument(help="host names or ids")],
    output: OutputFormat = OutputOpt,
) -> None:
    """Check that each host's BMC answers with the stored credentials (-> available or verify-failed)."""
    with client() as c:
        rows = []
        for n in names:
            r = _one(c, n, lambda cl, n: cl.post(_host(n, "verify")), "verify")
            r.setdefault("host", n)
            r["ok"] = r.get("state") == "available"
            rows.append(r)
    emit(rows, output, columns=["host", "state", "power_state", "last_error"] if output == OutputFormat.table
         else None)
    if any(not r["ok"] for r in rows):
        raise typer.Exit(exitcodes.PEER)


@rack_app.command("power")
@handle_errors
def rack_power(
    action: Annotated[RackPowerVerb, typer.Argument(help="status, on, off, soft-off or cycle")],
    rack: Annotated[str, typer.Argument(help="rack name or id")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="do not wait for the BMCs to confirm")] = False,
    yes: YesOpt = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Power every host of a rack at once, with a progress bar and a per-host result table."""
    if action not in (RackPowerVerb.on, RackPowerVerb.status):  # a person is asked; a script goes on
        confirm(f"Power {action.value} every host of rack {rack}?", yes, refuse_off_terminal=False)
    with client() as c:
        if action == RackPowerVerb.status:
            data = c.get(_rack(rack, "power"))
            _finish(list(data.get("results", [])), output, title=f"rack {rack}")
            return
        started = c.post(_rack(rack, "power"), json={"action": action.value, "wait": not no_wait,
                                                     "background": True})
        task_id = started["task_id"]
        task = _follow(c, task_id, f"power {action.value} {rack}", quiet=output != OutputFormat.table)
    if task.get("status") != "succeeded":
        raise typer.Exit(exitcodes.PEER)
    _finish(list(task.get("result", {}).get("results", [])), output, title=f"rack {rack}: power {action.value}")


def _follow(c: ProvClient, task_id: int, label: str, *, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err_console = stderr_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=quiet, transient=False) as bar:
        bar_id = bar.add_task(label, total=None)
        while True:
            task = c.get(f"/api/v1/tasks/{task_id}")
            # the power task reports its step as "<done>/<hosts>"
            done, _, total = str(task.get("step") or "").partition("/")
            if done.isdigit() and total.isdigit():
                bar.update(bar_id, completed=int(done), total=int(total))
            if task.get("status") in ("succeeded", "failed", "cancelled"):
                if task.get("status") != "succeeded":
                    err_console.print(f"task {task_id} {task.get('status')}: {task.get('error')}", highlight=False)
                return dict(task)
            time.sleep(POLL_INTERVAL)
