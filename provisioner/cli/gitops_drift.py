"""``prov drift``: what differs from the last applied inventory. Exit 0: no drift; 8: drift found.

The table shows each drifted object once, with every changed field as ``applied -> now``
(like the plan's lines); ``-o json`` gives the rows with their ``changes``. ``--config``
says how many hosts it checked: "0 checked" is not "no drift".
"""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import app
from provisioner.cli.output import NoHeadersOpt, OutputFormat, OutputOpt, emit, fail
from provisioner.client import ProvClient
from provisioner.errors import ProvError

DRIFT_COLUMNS = ["object", "kind", "detail"]
_MARK = {"changed": "~", "deleted": "-", "failed": "!", "config-unknown": "?"}


def _failed(exc: ProvError) -> typer.Exit:
    from provisioner.cli.gitops import _failed as failed

    return failed(exc)


def _drift_exit(rows: list[dict[str, Any]]) -> typer.Exit:
    return typer.Exit(exitcodes.DRIFT if rows else exitcodes.OK)


def render_text(rows: list[dict[str, Any]]) -> str:
    from provisioner.gitops.plan import short

    lines: list[str] = []
    for d in rows:
        mark = _MARK.get(str(d.get("kind")), "!")
        changes = d.get("changes") or []
        if changes:
            lines.append(f"{mark} {d['object']} {d['kind']}")
            lines += [f"    {c['field']}: {short(c.get('old'))} -> {short(c.get('new'))}" for c in changes]
        else:
            lines.append(f"{mark} {d['object']} {d['kind']}: {d.get('detail', '')}")
    objects = len({d.get("object") for d in rows})
    lines.append(f"Drift: {objects} object(s) differ from the last applied inventory.")
    return "\n".join(lines) + "\n"


def _show_drift(rows: list[dict[str, Any]], output: OutputFormat, applied: bool, no_headers: bool) -> None:
    if output in (OutputFormat.table, OutputFormat.wide):
        if not applied:
            sys.stdout.write("Nothing applied yet: no drift to report.\n")
        elif not rows:
            sys.stdout.write("No drift. Reality matches the last applied inventory.\n")
        else:
            sys.stdout.write(render_text(rows))
    elif output.tabular:
        emit(rows, output, columns=DRIFT_COLUMNS, headers=not no_headers)
    else:
        emit(rows, output)


def _last_drift(output: OutputFormat, no_headers: bool) -> None:
    """The controller's latest periodic result, as stored (nothing recomputed)."""
    try:
        with ProvClient() as client:
            last = client.get("/api/v1/gitops/drift/last")
    except ProvError as exc:
        raise _failed(exc) from None
    rows: list[dict[str, Any]] = list(last.get("drift") or [])
    if output in (OutputFormat.table, OutputFormat.wide):
        if last.get("applied_id") is None:
            sys.stdout.write("Nothing applied yet: no drift to report.\n")
            raise typer.Exit(exitcodes.OK)
        if not last.get("checked_at"):
            every = float(last.get("interval") or 0)
            sys.stdout.write("The controller has not checked the last applied inventory yet"
                             + (f" (it checks every {every:.0f} s).\n" if every else " (periodic check is off).\n"))
            raise typer.Exit(exitcodes.OK)
        sys.stdout.write(f"Last periodic check: {last['checked_at']}\n")
        _show_drift(rows, output, True, no_headers)
    elif output.tabular:
        _show_drift(rows, output, True, no_headers)
    else:
        emit(last, output)
    raise _drift_exit(rows)


def _checked_line(result: dict[str, Any]) -> str:
    checked = list(result.get("checked") or [])
    idle = list(result.get("not_active") or [])
    names = ", ".join(idle[:5]) + (f", +{len(idle) - 5} more" if len(idle) > 5 else "")
    rest = f" ({len(idle)} not active: {names})" if idle else ""
    if not checked:
        return f"Checked 0 hosts: no host of the last applied inventory is active{rest}; nothing was compared."
    return f"Checked {len(checked)} active host(s) in check mode{rest}."


def _config_drift(hosts: list[str], output: OutputFormat, timeout: float, no_headers: bool) -> None:
    """Ansible check mode on the active hosts of the applied inventory (a controller task)."""
    try:
        with ProvClient() as client:
            task = client.post("/api/v1/gitops/drift/config", json={"hosts": hosts})
            if output == OutputFormat.table:
                sys.stderr.write(f"task {task['id']} started: checking configuration in Ansible check mode\n")
            deadline = time.monotonic() + timeout
            while task["status"] not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise fail(f"task {task['id']} still {task['status']} after {timeout:.0f} s "
                               f"(prov task show {task['id']})", exitcodes.TIMEOUT)
                time.sleep(1)
                task = client.get(f"/api/v1/tasks/{task['id']}")
    except ProvError as exc:
        raise _failed(exc) from None
    if task["status"] != "succeeded":
        raise fail(f"config drift check {task['status']}: {task.get('error') or ''}", exitcodes.ERROR)
    result = task.get("result") or {}
    rows: list[dict[str, Any]] = list(result.get("drift") or [])
    line = _checked_line(result)
    if output in (OutputFormat.table, OutputFormat.wide):
        sys.stdout.write(line + "\n")
        if result.get("checked"):  # with nothing checked, "No drift" would be a claim about nothing
            _show_drift(rows, output, True, no_headers)
    else:
        if not result.get("checked"):
            sys.stderr.write(line + "\n")
        _show_drift(rows, output, True, no_headers)
    raise _drift_exit(rows)


@app.command("drift")
def drift_cmd(
    last: bool = typer.Option(False, "--last", help="show the controller's latest periodic check (no recompute)"),
    config: bool = typer.Option(False, "--config", help="run the active hosts' playbooks in Ansible check mode "
                                "(changes nothing) and report configuration changed by hand"),
    host: list[str] = typer.Option([], "--host", help="with --config: only this host (repeatable)"),
    timeout: float = typer.Option(3600, "--timeout", help="with --config: seconds to wait for the check"),
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Report objects that differ from the last applied inventory (applied -> now, per field).
    Exit 0: no drift; 8: drift found."""
    if last and config:
        raise fail("--last and --config exclude each other", exitcodes.ERROR)
    if last:
        _last_drift(output, no_headers)
    if config:
        _config_drift(host, output, timeout, no_headers)
    from provisioner.gitops import drift as drift_mod
    from provisioner.gitops.world import fetch

    try:
        with ProvClient() as client:
            world = fetch(client)
            # Guests only for hosts that the applied inventory gives guests.
            inv = drift_mod.inventory_from_applied(world.applied or {})
            if inv is not None:
                guest_hosts = {n for n, h in inv.hosts.items() if h.guests}
                if guest_hosts:
                    world = fetch(client, with_guests_for=guest_hosts)
    except ProvError as exc:
        raise _failed(exc) from None
    found = drift_mod.detect(world)
    rows: list[dict[str, Any]] = drift_mod.to_dicts(found)
    _show_drift(rows, output, bool(world.applied and world.applied.get("document")), no_headers)
    raise _drift_exit(rows)
