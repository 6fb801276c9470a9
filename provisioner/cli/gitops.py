"""``prov plan`` / ``prov apply`` / ``prov drift`` / ``prov inventory schema|validate``.

Exit codes follow Terraform's ``-detailed-exitcode``: plan exits 0 when there is
nothing to do, 2 when there are changes, 1 on any error. apply and drift exit
0 when everything went well, 1 when something failed or drifted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from provisioner.cli.groups import app, inventory_app
from provisioner.cli.output import OutputFormat, OutputOpt, emit, fail
from provisioner.client import ProvClient
from provisioner.errors import ProvError
from provisioner.gitops import drift as drift_mod
from provisioner.gitops import inventory as inv_mod
from provisioner.gitops import yamlsafe
from provisioner.gitops.apply import Outcome, apply_plan, build_plan, check_saved_plan
from provisioner.gitops.git import Checkout, checkout
from provisioner.gitops.plan import Plan, render_text
from provisioner.gitops.world import fetch

FileOpt = typer.Option(None, "--file", "-f", help="inventory file or directory")
GitOpt = typer.Option(None, "--git", help="git repository URL or path holding the inventory")
RefOpt = typer.Option("main", "--ref", help="branch, tag or commit to check out (with --git)")
PathOpt = typer.Option("", "--path", help="inventory path inside the repository (with --git)")


def _source(file: Path | None, git: str | None, ref: str, path: str) -> tuple[Path, str, Checkout | None]:
    if git:
        co = checkout(git, ref, path)
        return co.path, f"git {git}@{co.commit[:12]}", co
    if file is None:
        raise fail("give the inventory with -f FILE|DIR or --git URL", 1)
    return file, str(file), None


def _one_line(exc: ProvError) -> str:
    errors = exc.details.get("errors")
    if isinstance(errors, list) and len(errors) > 1:
        return f"{exc.message} (+{len(errors) - 1} more problem(s))"
    return exc.message


@app.command("plan")
def plan_cmd(
    file: Path | None = FileOpt,
    git: str | None = GitOpt,
    ref: str = RefOpt,
    path: str = PathOpt,
    out: Path | None = typer.Option(None, "--out", help="save the plan to apply later with --plan-file"),
    output: OutputFormat = OutputOpt,
) -> None:
    """Show what apply would change. Exit 0: nothing to do; 2: changes; 1: error."""
    co = None
    try:
        inv_path, source, co = _source(file, git, ref, path)
        inv = inv_mod.load(inv_path)
        with ProvClient() as client:
            plan, _world, _pw = build_plan(client, inv, source=source)
    except ProvError as exc:
        raise fail(_one_line(exc), 1) from None
    finally:
        if co:
            co.cleanup()
    if out:
        out.write_text(json.dumps(plan.to_dict(), indent=2, default=str) + "\n")
    if output == OutputFormat.table:
        sys.stdout.write(render_text(plan))
    else:
        emit(plan.to_dict(), output)
    raise typer.Exit(2 if plan.changed else 0)


def _saved_plan(path: Path) -> Plan:
    """A plan written by ``prov plan --out``, read within the inventory's size bound."""
    try:
        return Plan.from_dict(json.loads(yamlsafe.read_text(path)))
    except yamlsafe.YamlError as exc:
        raise fail(f"{path}:{exc.line}: {exc.reason}", 1) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # RecursionError: json.loads on thousands of nested brackets; AttributeError: not an object
        raise fail(f"{path}: not a saved prov plan ({exc.__class__.__name__})", 1) from None


@app.command("apply")
def apply_cmd(
    file: Path | None = FileOpt,
    git: str | None = GitOpt,
    ref: str = RefOpt,
    path: str = PathOpt,
    plan_file: Path | None = typer.Option(None, "--plan-file", help="apply this saved plan, only if still current"),
    allow_delete: bool = typer.Option(False, "--allow-delete", help="allow the plan to delete objects"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="hosts worked on at once"),
    wait: bool = typer.Option(False, "--wait", help="wait for install/configure tasks to finish"),
    output: OutputFormat = OutputOpt,
) -> None:
    """Make the controller match the inventory. Exit 0 when every action succeeded, 1 otherwise."""
    co = None
    try:
        inv_path, source, co = _source(file, git, ref, path)
        inv = inv_mod.load(inv_path)
        saved = _saved_plan(plan_file) if plan_file is not None else None  # read before the controller is asked
        context = f"apply {co.commit}" if co else "apply"
        with ProvClient(context=context) as client:
            plan, world, passwords = build_plan(client, inv, source=source)
            if saved is not None:
                check_saved_plan(saved, plan)
            if not plan.changed:
                if output == OutputFormat.table:
                    sys.stdout.write("No changes. The controller matches the inventory.\n")
                else:
                    emit({"ok": True, "results": []}, output)
                return

            def show(o: Outcome) -> None:
                if output == OutputFormat.table:
                    mark = "ok" if o.ok else "FAILED"
                    msg = f": {o.message}" if o.message else ""
                    sys.stderr.write(f"{o.action.op:>12} {o.action.key} ... {mark}{msg}\n")

            result = apply_plan(client, inv, plan, passwords, world, allow_delete=allow_delete,
                                concurrency=concurrency, wait=wait, commit=co.commit if co else None, progress=show)
    except ProvError as exc:
        raise fail(_one_line(exc), 1) from None
    finally:
        if co:
            co.cleanup()
    if output == OutputFormat.table:
        failed = result.failed
        sys.stdout.write(f"Apply: {len(result.outcomes) - len(failed)} succeeded, {len(failed)} failed.\n")
    else:
        emit(result.to_dict(), output)
    raise typer.Exit(1 if result.failed else 0)


def _show_drift(rows: list[dict[str, Any]], output: OutputFormat, applied: bool) -> None:
    if output == OutputFormat.table:
        if not applied:
            sys.stdout.write("Nothing applied yet: no drift to report.\n")
        elif not rows:
            sys.stdout.write("No drift. Reality matches the last applied inventory.\n")
        else:
            emit(rows, output, columns=["object", "kind", "detail"])
    else:
        emit(rows, output)


def _last_drift(output: OutputFormat) -> None:
    """The controller's latest periodic result, as stored (nothing recomputed)."""
    try:
        with ProvClient() as client:
            last = client.get("/api/v1/gitops/drift/last")
    except ProvError as exc:
        raise fail(_one_line(exc), 1) from None
    rows: list[dict[str, Any]] = list(last.get("drift") or [])
    if output == OutputFormat.table:
        if last.get("applied_id") is None:
            sys.stdout.write("Nothing applied yet: no drift to report.\n")
            raise typer.Exit(0)
        if not last.get("checked_at"):
            every = float(last.get("interval") or 0)
            sys.stdout.write("The controller has not checked the last applied inventory yet"
                             + (f" (it checks every {every:.0f} s).\n" if every else " (periodic check is off).\n"))
            raise typer.Exit(0)
        sys.stdout.write(f"Last periodic check: {last['checked_at']}\n")
        _show_drift(rows, output, True)
    else:
        emit(last, output)
    raise typer.Exit(1 if rows else 0)


def _config_drift(hosts: list[str], output: OutputFormat, timeout: float) -> None:
    """Ansible check mode on the active hosts of the applied inventory (a controller task)."""
    try:
        with ProvClient() as client:
            task = client.post("/api/v1/gitops/drift/config", json={"hosts": hosts})
            if output == OutputFormat.table:
                sys.stderr.write(f"task {task['id']} started: checking configuration in Ansible check mode\n")
            deadline = time.monotonic() + timeout
            while task["status"] not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise fail(f"task {task['id']} still {task['status']} after {timeout:.0f} s", 1)
                time.sleep(1)
                task = client.get(f"/api/v1/tasks/{task['id']}")
    except ProvError as exc:
        raise fail(_one_line(exc), 1) from None
    if task["status"] != "succeeded":
        raise fail(f"config drift check {task['status']}: {task.get('error') or ''}", 1)
    result = task.get("result") or {}
    rows: list[dict[str, Any]] = list(result.get("drift") or [])
    if output == OutputFormat.table:
        sys.stdout.write(f"Checked {len(result.get('checked') or [])} active host(s) in check mode.\n")
        _show_drift(rows, output, True)
    else:
        emit(rows, output)
    raise typer.Exit(1 if rows else 0)


@app.command("drift")
def drift_cmd(
    last: bool = typer.Option(False, "--last", help="show the controller's latest periodic check (no recompute)"),
    config: bool = typer.Option(False, "--config", help="run the active hosts' playbooks in Ansible check mode "
                                "(changes nothing) and report configuration changed by hand"),
    host: list[str] = typer.Option([], "--host", help="with --config: only this host (repeatable)"),
    timeout: float = typer.Option(3600, "--timeout", help="with --config: seconds to wait for the check"),
    output: OutputFormat = OutputOpt,
) -> None:
    """Report objects that differ from the last applied inventory. Exit 1 if anything drifted."""
    if last and config:
        raise fail("--last and --config exclude each other", 1)
    if last:
        _last_drift(output)
    if config:
        _config_drift(host, output, timeout)
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
        raise fail(_one_line(exc), 1) from None
    found = drift_mod.detect(world)
    rows: list[dict[str, Any]] = drift_mod.to_dicts(found)
    _show_drift(rows, output, bool(world.applied and world.applied.get("document")))
    raise typer.Exit(1 if rows else 0)


@inventory_app.command("schema")
def schema_cmd() -> None:
    """Print the inventory's JSON Schema (for editors and CI validation)."""
    sys.stdout.write(json.dumps(inv_mod.json_schema(), indent=2) + "\n")


@inventory_app.command("validate")
def validate_cmd(file: Path = typer.Argument(..., help="inventory file or directory")) -> None:
    """Check an inventory offline: schema, duplicates, references, no inline secrets."""
    try:
        inv = inv_mod.load(file)
    except ProvError as exc:
        for line in exc.details.get("errors") or [exc.message]:
            sys.stderr.write(f"error: {line}\n")
        raise typer.Exit(1) from None
    sys.stdout.write(f"ok: {len(inv.racks)} racks, {len(inv.hosts)} hosts, {len(inv.profiles)} profiles\n")
