"""``prov plan`` / ``prov apply`` / ``prov drift`` / ``prov inventory schema|validate``.

Exit codes follow Terraform's ``-detailed-exitcode``: plan exits 0 when there is
nothing to do, 2 when there are changes, 1 on an error in the inventory, the plan
or an action (2 is taken); only an API token refused (5) and a controller that
cannot be reached (7) keep their own codes (exitcodes.py). apply exits 0 when every
action succeeded, 1 otherwise; drift 0 when nothing drifted, 8 when something did.
The gitops package (pydantic models, git) loads inside the commands.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import app, inventory_app
from provisioner.cli.output import NoHeadersOpt, OutputFormat, OutputOpt, YesOpt, confirm, emit, fail
from provisioner.client import ProvClient
from provisioner.errors import ProvError

if TYPE_CHECKING:
    from provisioner.gitops.apply import Outcome
    from provisioner.gitops.git import Checkout
    from provisioner.gitops.plan import Plan

FileOpt = typer.Option(None, "--file", "-f", help="inventory file or directory")
GitOpt = typer.Option(None, "--git", help="git repository URL or path holding the inventory")
RefOpt = typer.Option("main", "--ref", help="branch, tag or commit to check out (with --git)")
PathOpt = typer.Option("", "--path", help="inventory path inside the repository (with --git)")
DRIFT_COLUMNS = ["object", "kind", "detail"]
PLAN_COLUMNS = ["op", "kind", "name", "host", "reason"]


def _source(file: Path | None, git: str | None, ref: str, path: str) -> tuple[Path, str, Checkout | None]:
    if git:
        from provisioner.gitops.git import checkout

        co = checkout(git, ref, path)
        return co.path, f"git {git}@{co.commit[:12]}", co
    if file is None:
        raise fail("give the inventory with -f FILE|DIR or --git URL", exitcodes.ERROR)
    return file, str(file), None


def _one_line(exc: ProvError) -> str:
    errors = exc.details.get("errors")
    if isinstance(errors, list) and len(errors) > 1:
        return f"{exc.message} (+{len(errors) - 1} more problem(s))"
    return exc.message


def _failed(exc: ProvError) -> typer.Exit:
    """One error line; exit 1, or 5/7 when the controller refused the token or could not be reached."""
    code = exitcodes.for_error(exc)
    return fail(_one_line(exc), code if code in (exitcodes.AUTH, exitcodes.UNREACHABLE) else exitcodes.ERROR)


@app.command("plan")
def plan_cmd(
    file: Path | None = FileOpt,
    git: str | None = GitOpt,
    ref: str = RefOpt,
    path: str = PathOpt,
    out: Path | None = typer.Option(None, "--out", help="save the plan to apply later with --plan-file"),
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Show what apply would change. Exit 0: nothing to do; 2: changes; 1: error."""
    from provisioner.gitops import inventory as inv_mod
    from provisioner.gitops.apply import build_plan

    co = None
    try:
        inv_path, source, co = _source(file, git, ref, path)
        inv = inv_mod.load(inv_path)
        with ProvClient() as client:
            plan, _world, _pw = build_plan(client, inv, source=source)
    except ProvError as exc:
        raise _failed(exc) from None
    finally:
        if co:
            co.cleanup()
    if out:
        out.write_text(json.dumps(plan.to_dict(), indent=2, default=str) + "\n")
    _show_plan(plan, output, no_headers)
    raise typer.Exit(exitcodes.USAGE if plan.changed else exitcodes.OK)


def _show_plan(plan: Plan, output: OutputFormat, no_headers: bool) -> None:
    from provisioner.gitops.plan import render_text

    if output in (OutputFormat.table, OutputFormat.wide):
        sys.stdout.write(render_text(plan))
    elif output.tabular:  # name, csv: one row per action
        emit(plan.to_dict()["actions"], output, columns=PLAN_COLUMNS, headers=not no_headers)
    else:
        emit(plan.to_dict(), output)


def _saved_plan(path: Path) -> Plan:
    """A plan written by ``prov plan --out``, read within the inventory's size bound."""
    from provisioner.gitops import yamlsafe
    from provisioner.gitops.plan import Plan

    try:
        return Plan.from_dict(json.loads(yamlsafe.read_text(path)))
    except yamlsafe.YamlError as exc:
        raise fail(f"{path}:{exc.line}: {exc.reason}", exitcodes.ERROR) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # RecursionError: json.loads on thousands of nested brackets; AttributeError: not an object
        raise fail(f"{path}: not a saved prov plan ({exc.__class__.__name__})", exitcodes.ERROR) from None


def _ask(plan: Plan, yes: bool) -> None:
    """On a terminal, the plan's summary and a question before anything changes (``--yes`` skips it)."""
    counts = ", ".join(f"{n} {op}" for op, n in plan.summary().items())
    confirm(f"Apply {len(plan.actions)} change(s) ({counts})?", yes, refuse_off_terminal=False)


@app.command("apply")
def apply_cmd(
    file: Path | None = FileOpt,
    git: str | None = GitOpt,
    ref: str = RefOpt,
    path: str = PathOpt,
    plan_file: Path | None = typer.Option(None, "--plan-file", help="apply this saved plan, only if still current"),
    allow_delete: bool = typer.Option(False, "--allow-delete", help="allow the plan to delete objects"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="hosts worked on at once"),
    wait: bool = typer.Option(True, "--wait/--no-wait",
                              help="wait for the install/configure tasks to end (--no-wait: only start them)"),
    yes: YesOpt = False,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Make the controller match the inventory (asks first on a terminal). Exit 0 when every action succeeded."""
    from provisioner.gitops import inventory as inv_mod
    from provisioner.gitops.apply import apply_plan, build_plan, check_saved_plan

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
                elif not output.tabular:
                    emit({"ok": True, "results": []}, output)
                return
            if output in (OutputFormat.table, OutputFormat.wide) and not yes and sys.stdin.isatty():
                _show_plan(plan, output, no_headers)
            _ask(plan, yes)

            def show(o: Outcome) -> None:
                if output == OutputFormat.table:
                    mark = "ok" if o.ok else "FAILED"
                    msg = f": {o.message}" if o.message else ""
                    sys.stderr.write(f"{o.action.op:>12} {o.action.key} ... {mark}{msg}\n")

            result = apply_plan(client, inv, plan, passwords, world, allow_delete=allow_delete,
                                concurrency=concurrency, wait=wait, commit=co.commit if co else None, progress=show)
    except ProvError as exc:
        raise _failed(exc) from None
    finally:
        if co:
            co.cleanup()
    if output == OutputFormat.table:
        failed = result.failed
        sys.stdout.write(f"Apply: {len(result.outcomes) - len(failed)} succeeded, {len(failed)} failed.\n")
    elif output.tabular:
        emit(result.to_dict()["results"], output, columns=["op", "object", "ok", "message", "task"],
             headers=not no_headers)
    else:
        emit(result.to_dict(), output)
    raise typer.Exit(exitcodes.ERROR if result.failed else exitcodes.OK)


def _drift_exit(rows: list[dict[str, Any]]) -> typer.Exit:
    return typer.Exit(exitcodes.DRIFT if rows else exitcodes.OK)


def _show_drift(rows: list[dict[str, Any]], output: OutputFormat, applied: bool, no_headers: bool) -> None:
    if output == OutputFormat.table:
        if not applied:
            sys.stdout.write("Nothing applied yet: no drift to report.\n")
        elif not rows:
            sys.stdout.write("No drift. Reality matches the last applied inventory.\n")
        else:
            emit(rows, output, columns=DRIFT_COLUMNS, headers=not no_headers)
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
    if output == OutputFormat.table:
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
    if output == OutputFormat.table:
        sys.stdout.write(f"Checked {len(result.get('checked') or [])} active host(s) in check mode.\n")
        _show_drift(rows, output, True, no_headers)
    elif output.tabular:
        _show_drift(rows, output, True, no_headers)
    else:
        emit(rows, output)
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
    """Report objects that differ from the last applied inventory. Exit 0: no drift; 8: drift found."""
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


@inventory_app.command("schema")
def schema_cmd() -> None:
    """Print the inventory's JSON Schema (for editors and CI validation)."""
    from provisioner.gitops import inventory as inv_mod

    sys.stdout.write(json.dumps(inv_mod.json_schema(), indent=2) + "\n")


@inventory_app.command("validate")
def validate_cmd(file: Annotated[Path, typer.Argument(help="inventory file or directory")]) -> None:
    """Check an inventory offline: schema, duplicates, references, no inline secrets."""
    from provisioner.gitops import inventory as inv_mod

    try:
        inv = inv_mod.load(file)
    except ProvError as exc:
        for line in exc.details.get("errors") or [exc.message]:
            sys.stderr.write(f"error: {line}\n")
        raise typer.Exit(exitcodes.ERROR) from None
    sys.stdout.write(f"ok: {len(inv.racks)} racks, {len(inv.hosts)} hosts, {len(inv.profiles)} profiles\n")
