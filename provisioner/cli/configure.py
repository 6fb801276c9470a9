"""``prov host configure``, ``prov rack configure`` and ``prov inventory ansible``.

The command follows the run live (``--no-wait`` only starts it): one line per
Ansible task result and host (from ``GET /configure/{task}``), a progress line,
then a per-host summary.
``prov inventory ansible [--list|--host H]`` prints the dynamic inventory, so
``ansible-inventory -i playbooks/inventory/prov_inventory.sh --list`` works.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli.choices import ContainerEngine, Playbook, values
from provisioner.cli.groups import host_app, inventory_app, rack_app
from provisioner.cli.output import OutputFormat, OutputOpt, client, emit, handle_errors, stdout_console
from provisioner.errors import ConfigRunError, InvalidInput

if TYPE_CHECKING:
    from provisioner.client import ProvClient

PlaybookOpt = Annotated[
    list[Playbook] | None,
    typer.Option("--playbook", "-p", help="playbook to run (repeatable; default: site)"),
]
EngineOpt = Annotated[ContainerEngine, typer.Option("--engine", help="container engine the playbooks install")]
VarOpt = Annotated[
    list[str] | None, typer.Option("--var", "-e", help="role switch for this run, KEY=VALUE (JSON value)")
]
KeyOpt = Annotated[list[str] | None, typer.Option("--admin-key", help="extra OpenSSH public key for the admin user")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the run live until it ends (--no-wait: "
                                                             "print the task and return)")]

_STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "unreachable": "bold red"}


def _parse_vars(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(field="--var", reason=f"{pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _body(playbooks: list[Playbook] | None, engine: ContainerEngine, var: list[str] | None,
          keys: list[str] | None) -> dict[str, Any]:
    return {"playbooks": values(list(playbooks or [])) or ["site"], "engine": engine.value, "vars": _parse_vars(var),
            "admin_keys": keys or []}


def follow(c: ProvClient, task_id: int, *, interval: float = 1.0, out: Any = None) -> dict[str, Any]:
    """Print the run's history lines as they arrive; return the finished task."""
    from rich.live import Live
    from rich.text import Text

    console = stdout_console()
    after = 0
    task: dict[str, Any] = {}
    status_line = Text("")
    with Live(status_line, console=console, transient=True, auto_refresh=False,
              redirect_stdout=False) as live:
        while True:
            data = c.get(f"/api/v1/configure/{task_id}", params={"after": after})
            task = data["task"]
            for ev in data["events"]:
                after = max(after, int(ev["id"]))
                kind = str(ev["event"]).removeprefix("ansible-")
                style = _STYLE.get(kind, "cyan")
                host = ev.get("host") or "-"
                msg = str(ev["message"]).removeprefix(f"ansible: {kind}: ")
                line = Text.assemble((f"{kind:<11}", style), (f" {host:<16} ", "bold"), msg)
                if ev.get("to_state"):
                    line = Text.assemble(("state      ", "magenta"), (f" {host:<16} ", "bold"),
                                         f"{ev.get('from_state')} -> {ev['to_state']}: {msg}")
                live.console.print(line, highlight=False)
            status_line.plain = f"task {task_id}: {task['status']} {task['progress']}% {task.get('step') or ''}"
            live.update(status_line, refresh=True)
            if task["status"] in ("succeeded", "failed", "cancelled"):
                return task
            time.sleep(interval)


def _report(task: dict[str, Any], output: OutputFormat) -> None:
    hosts = (task.get("result") or {}).get("hosts") or {}
    if output.tabular:
        rows = [{"host": name, **{k: h.get(k) for k in ("status", "ok", "changed", "failed", "unreachable",
                                                          "skipped", "failed_task")}} for name, h in hosts.items()]
        if rows:
            emit(rows, output, title=f"task {task['id']}: {task['status']}")
        art = (task.get("result") or {}).get("artifact_dir")
        if art and output == OutputFormat.table:
            typer.echo(f"artifacts: {art}")
    else:
        emit(task, output)
    if task["status"] != "succeeded":
        raise ConfigRunError(reason=f"task {task['id']} {task['status']}: {task.get('error') or ''}".strip())


def _submit(path: str, body: dict[str, Any], wait: bool, output: OutputFormat) -> None:
    with client() as c:
        task = c.post(path, json=body)
        if not wait:
            emit(task, output)
            return
        if output == OutputFormat.table:
            typer.echo(f"task {task['id']} started: playbooks {', '.join(body['playbooks'])}, engine {body['engine']}")
        _report(follow(c, int(task["id"])), output)


@host_app.command("configure")
@handle_errors
def host_configure(
    name: Annotated[str, typer.Argument(help="host name or id")],
    playbook: PlaybookOpt = None,
    engine: EngineOpt = ContainerEngine.docker,
    var: VarOpt = None,
    admin_key: KeyOpt = None,
    wait: WaitOpt = True,
    output: OutputFormat = OutputOpt,
) -> None:
    """Run configuration playbooks (hardening, container engine) on one host."""
    _submit(f"/api/v1/hosts/{quote(name, safe='')}/configure", _body(playbook, engine, var, admin_key), wait, output)


@rack_app.command("configure")
@handle_errors
def rack_configure(
    rack: Annotated[str, typer.Argument(help="rack name or id")],
    playbook: PlaybookOpt = None,
    engine: EngineOpt = ContainerEngine.docker,
    var: VarOpt = None,
    admin_key: KeyOpt = None,
    wait: WaitOpt = True,
    output: OutputFormat = OutputOpt,
) -> None:
    """Run configuration playbooks on every host of a rack, in one Ansible run."""
    _submit(f"/api/v1/racks/{quote(rack, safe='')}/configure", _body(playbook, engine, var, admin_key), wait, output)


@inventory_app.command("ansible")
@handle_errors
def inventory_ansible(
    list_: Annotated[bool, typer.Option("--list", help="the whole inventory (dynamic-inventory protocol)")] = False,
    host: Annotated[str | None, typer.Option("--host", help="one host's variables")] = None,
) -> None:
    """Print the Ansible dynamic inventory (JSON) generated from prov's database."""
    with client() as c:
        data = c.get("/api/v1/inventory/ansible", params={"host": host} if host else None)
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
