"""``prov host install|retry`` and ``prov rack provision`` with live progress.

``install`` starts the workflow and (unless ``--no-wait``) follows its task
until the host is active or failed. ``rack provision`` shows one live row per
host (phase, step, state, elapsed) on a terminal and a final table; the exit
code is 0 only if every host succeeded (exitcodes.for_task otherwise, 9 when
the wait gave up). rich loads only to draw the live table.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli import exitcodes
from provisioner.cli.choices import ContainerEngine
from provisioner.cli.groups import host_app, rack_app
from provisioner.cli.output import Columns, OutputFormat, OutputOpt, client, emit, fail, handle_errors, stderr_console

if TYPE_CHECKING:
    from rich.table import Table

    from provisioner.client import ProvClient

POLL = 1.0
_DONE = {"succeeded", "failed", "cancelled"}
ROW_COLUMNS = ("host", "phase", "step", "state", "elapsed", "error")
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the task until it ends (--no-wait: print "
                                                             "the task and return)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait before giving up (exit 9)")]


def _task_until_done(c: ProvClient, task_id: int, render: Any = None, timeout: float = 24 * 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = c.get(f"/api/v1/tasks/{task_id}")
        if render is not None:
            render(task)
        if task["status"] in _DONE:
            return task
        if time.monotonic() > deadline:
            raise fail(f"task {task_id} still {task['status']} after {timeout:.0f} s (prov task show {task_id})",
                       exitcodes.TIMEOUT)
        time.sleep(POLL)


@host_app.command("install")
@handle_errors
def install_cmd(
    name: str = typer.Argument(..., help="host name or id"),
    profile: str | None = typer.Option(None, "--profile", help="OS profile (default: the host's)"),
    configure: bool | None = typer.Option(None, "--configure/--no-configure",
                                          help="run the profile's playbooks after the install"),
    engine: ContainerEngine | None = typer.Option(None, "--engine", help="container engine (default: the profile's)"),
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 24 * 3600,
    output: OutputFormat = OutputOpt,
) -> None:
    """Install a host: netboot its installer or deploy its image, then configure it."""
    body = {k: v for k, v in {"profile": profile, "configure": configure,
                              "engine": engine.value if engine else None}.items() if v is not None}
    with client() as c:
        task = c.post(f"/api/v1/hosts/{quote(name, safe='')}/install", json=body)
        if not wait:
            emit(task, output, columns=["id", "kind", "status", "step"])
            return
        last = [""]

        def show(t: dict[str, Any]) -> None:
            line = f"{name}: {t['status']} {t['progress']}% {t['step']}"
            if line != last[0] and output == OutputFormat.table:
                stderr_console().print(line, markup=False, highlight=False)
                last[0] = line

        task = _task_until_done(c, int(task["id"]), show, timeout)
        host = c.get(f"/api/v1/hosts/{quote(name, safe='')}")
    if not output.tabular:
        emit({"task": task, "host": host}, output)
    elif output == OutputFormat.table:
        sys.stdout.write(f"{host['name']}: {host['state']}" + (f" ({task['error']})" if task.get("error") else "")
                         + "\n")
    else:
        emit(host, output, columns=["name", "state", "power_state", "last_error"])
    if task["status"] != "succeeded":
        raise typer.Exit(exitcodes.for_task(task))


@host_app.command("retry")
@handle_errors
def retry_cmd(name: str = typer.Argument(..., help="host name or id"), output: OutputFormat = OutputOpt) -> None:
    """Install a host in install-failed again, from the first step."""
    with client() as c:
        emit(c.post(f"/api/v1/hosts/{quote(name, safe='')}/retry"), output, columns=["id", "kind", "status"])


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-host rows with the elapsed time of the ones still running."""
    now = time.time()
    out = []
    for r in sorted(rows, key=lambda r: r["host"]):
        elapsed = r.get("elapsed")
        if elapsed is None and r.get("started"):
            elapsed = round(now - float(r["started"]))
        out.append({**r, "elapsed": f"{elapsed}s" if elapsed is not None else None})
    return out


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for col in ROW_COLUMNS:
        table.add_column(col, no_wrap=col != "error")
    for r in _rows(rows):
        table.add_row(*[str(r.get(col) or "-") for col in ROW_COLUMNS])
    return table


@rack_app.command("provision")
@handle_errors
def provision_cmd(
    rack: str = typer.Argument(..., help="rack name or id"),
    role: list[str] = typer.Option([], "--role", help="only hosts with this role (repeatable)"),
    concurrency: int = typer.Option(4, "--concurrency", "-j", min=1, max=256, help="hosts installed at once"),
    profile: str | None = typer.Option(None, "--profile", help="OS profile for every host (default: each host's)"),
    configure: bool | None = typer.Option(None, "--configure/--no-configure",
                                          help="run the profile's playbooks after each install"),
    reinstall: bool = typer.Option(False, "--reinstall", help="also reinstall active hosts"),
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 24 * 3600,
    output: OutputFormat = OutputOpt,
) -> None:
    """Install every host of a rack (a queue with a concurrency cap; failures never stop the others)."""
    body: dict[str, Any] = {"concurrency": concurrency, "reinstall": reinstall}
    if role:
        body["roles"] = role
    if profile:
        body["profile"] = profile
    if configure is not None:
        body["configure"] = configure
    with client() as c:
        task = c.post(f"/api/v1/racks/{quote(rack, safe='')}/provision", json=body)
        if not wait:
            emit(task, output, columns=["id", "kind", "status", "step"])
            return
        title = f"rack {rack}: provisioning"
        if output == OutputFormat.table and sys.stderr.isatty():
            from rich.live import Live

            with Live(_table([], title), console=stderr_console(), refresh_per_second=2) as live:
                task = _task_until_done(c, int(task["id"]),
                                        lambda t: live.update(_table(t["result"].get("hosts", []), title)), timeout)
        else:
            task = _task_until_done(c, int(task["id"]), timeout=timeout)
    rows = task["result"].get("hosts", [])
    if output.tabular:
        emit(_rows(rows), output, columns=Columns(table=ROW_COLUMNS, drop=("step", "elapsed")),
             title=f"rack {rack}: {task['status']}")
    else:
        emit(task["result"], output)
    if task["status"] != "succeeded":
        raise fail(task.get("error") or f"rack provisioning {task['status']}", exitcodes.for_task(task))
