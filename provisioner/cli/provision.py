"""``prov host install|retry`` and ``prov rack provision`` with live progress.

``install`` starts the workflow and, with ``--wait`` (the default on a
terminal), follows its task until the host is active or failed. ``rack
provision`` shows one live row per host (phase, step, state, elapsed) and a
final table; the exit code is 0 only if every host succeeded.
"""

from __future__ import annotations

import sys
import time
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from provisioner.cli.groups import host_app, rack_app
from provisioner.cli.output import OutputFormat, OutputOpt, client, emit, fail, handle_errors
from provisioner.client import ProvClient

POLL = 1.0
_DONE = {"succeeded", "failed", "cancelled"}


def _task_until_done(c: ProvClient, task_id: int, render: Any = None, timeout: float = 24 * 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = c.get(f"/api/v1/tasks/{task_id}")
        if render is not None:
            render(task)
        if task["status"] in _DONE or time.monotonic() > deadline:
            return task
        time.sleep(POLL)


@host_app.command("install")
@handle_errors
def install_cmd(
    name: str = typer.Argument(..., help="host name or id"),
    profile: str | None = typer.Option(None, "--profile", help="OS profile (default: the host's)"),
    configure: bool | None = typer.Option(None, "--configure/--no-configure",
                                          help="run the profile's playbooks after the install"),
    engine: str | None = typer.Option(None, "--engine", help="docker | podman | none"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the install until it ends"),
    output: OutputFormat = OutputOpt,
) -> None:
    """Install a host: netboot its installer or deploy its image, then configure it."""
    body = {k: v for k, v in {"profile": profile, "configure": configure, "engine": engine}.items() if v is not None}
    with client() as c:
        task = c.post(f"/api/v1/hosts/{quote(name, safe='')}/install", json=body)
        if not wait:
            emit(task, output, columns=["id", "kind", "status", "step"])
            return
        console = Console(stderr=True)
        last = [""]

        def show(t: dict[str, Any]) -> None:
            line = f"{name}: {t['status']} {t['progress']}% {t['step']}"
            if line != last[0] and output == OutputFormat.table:
                console.print(line, markup=False, highlight=False)
                last[0] = line

        task = _task_until_done(c, int(task["id"]), show)
        host = c.get(f"/api/v1/hosts/{quote(name, safe='')}")
    if output != OutputFormat.table:
        emit({"task": task, "host": host}, output)
    else:
        sys.stdout.write(f"{host['name']}: {host['state']}" + (f" ({task['error']})" if task.get("error") else "")
                         + "\n")
    if task["status"] != "succeeded":
        raise typer.Exit(1)


@host_app.command("retry")
@handle_errors
def retry_cmd(name: str = typer.Argument(...), output: OutputFormat = OutputOpt) -> None:
    """Install a host in install-failed again, from the first step."""
    with client() as c:
        emit(c.post(f"/api/v1/hosts/{quote(name, safe='')}/retry"), output, columns=["id", "kind", "status"])


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("host", "phase", "step", "state", "elapsed", "error"):
        table.add_column(col)
    now = time.time()
    for r in sorted(rows, key=lambda r: r["host"]):
        elapsed = r.get("elapsed")
        if elapsed is None and r.get("started"):
            elapsed = round(now - float(r["started"]))
        table.add_row(r["host"], str(r.get("phase", "")), str(r.get("step", "") or ""), str(r.get("state", "") or ""),
                      f"{elapsed}s" if elapsed is not None else "-", str(r.get("error") or ""))
    return table


@rack_app.command("provision")
@handle_errors
def provision_cmd(
    rack: str = typer.Argument(..., help="rack name or id"),
    role: list[str] = typer.Option([], "--role", help="only hosts with this role (repeatable)"),
    concurrency: int = typer.Option(4, "--concurrency", "-j", min=1, max=256, help="hosts installed at once"),
    profile: str | None = typer.Option(None, "--profile"),
    configure: bool | None = typer.Option(None, "--configure/--no-configure"),
    reinstall: bool = typer.Option(False, "--reinstall", help="also reinstall active hosts"),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
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
            with Live(_table([], title), console=Console(stderr=True), refresh_per_second=2) as live:
                task = _task_until_done(c, int(task["id"]),
                                        lambda t: live.update(_table(t["result"].get("hosts", []), title)))
        else:
            task = _task_until_done(c, int(task["id"]))
    rows = task["result"].get("hosts", [])
    if output == OutputFormat.table:
        Console().print(_table(rows, f"rack {rack}: {task['status']}"))
    else:
        emit(task["result"], output)
    if task["status"] != "succeeded":
        raise fail(task.get("error") or f"rack provisioning {task['status']}", 1)
