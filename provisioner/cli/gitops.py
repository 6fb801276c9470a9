"""``prov plan`` / ``prov apply`` / ``prov inventory schema|validate`` (``prov drift``: gitops_drift.py).

Exit codes follow Terraform's ``-detailed-exitcode``: plan exits 0 when there is
nothing to do, 2 when there are changes, 1 on an error in the inventory, the plan
or an action (2 is taken); only an API token refused (5) and a controller that
cannot be reached (7) keep their own codes (exitcodes.py). apply exits 0 when every
action succeeded, 1 otherwise, 11 when a plan that installs, starts guests or deletes
was not confirmed (Terraform's "Type yes"; off a terminal only ``--yes`` confirms).
The gitops package (pydantic models, git) loads inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import app, inventory_app
from provisioner.cli.output import NoHeadersOpt, OutputFormat, OutputOpt, emit, fail
from provisioner.client import ProvClient
from provisioner.errors import ProvError

if TYPE_CHECKING:
    from provisioner.gitops.apply import ApplyResult, Outcome
    from provisioner.gitops.git import Checkout
    from provisioner.gitops.plan import Plan

FileOpt = typer.Option(None, "--file", "-f", help="inventory file or directory")
GitOpt = typer.Option(None, "--git", help="git repository URL or path holding the inventory")
RefOpt = typer.Option("main", "--ref", help="branch, tag or commit to check out (with --git)")
PathOpt = typer.Option("", "--path", help="inventory path inside the repository (with --git)")
PLAN_COLUMNS = ["op", "kind", "name", "host", "reason"]
PROBLEM_COLUMNS = ["file", "line", "field", "reason"]
SHOWN = 5  # objects named in the confirmation line before "+N more"


class _Source:
    """Where the inventory is read: a path, or a checkout of a git commit (cleaned up after)."""

    def __init__(self, path: Path, source: str, origin: dict[str, str], checkout: Checkout | None = None) -> None:
        self.path, self.source, self.origin, self.checkout = path, source, origin, checkout

    def cleanup(self) -> None:
        if self.checkout:
            self.checkout.cleanup()


def _git_source(url: str, ref: str, path: str) -> _Source:
    from provisioner.gitops.git import checkout

    local = Path(url)
    if local.exists():  # a path: absolute, so a saved plan finds it from anywhere
        url = str(local.resolve())
    co = checkout(url, ref, path)
    return _Source(co.path, f"git {url}@{co.commit[:12]}",
                   {"git": url, "ref": ref, "path": path, "commit": co.commit}, co)


def _source(file: Path | None, git: str | None, ref: str, path: str) -> _Source:
    if git:
        return _git_source(git, ref, path)
    if file is None:
        raise fail("give the inventory with -f FILE|DIR or --git URL", exitcodes.ERROR)
    return _Source(file, str(file), {"file": str(file.resolve())})


def _planned_source(saved: Plan) -> _Source:
    """The inventory a saved plan was made from (``apply --plan-file`` without -f/--git)."""
    origin = saved.origin
    if origin.get("git") and origin.get("commit"):
        src = _git_source(origin["git"], origin["commit"], origin.get("path", ""))
        src.origin = dict(origin)
        return src
    if origin.get("file"):
        return _Source(Path(origin["file"]), saved.source or origin["file"], dict(origin))
    raise fail("the saved plan does not say where its inventory is (made by an older prov): "
               "give it with -f FILE|DIR or --git URL", exitcodes.ERROR)


def _one_line(exc: ProvError) -> str:
    errors = exc.details.get("errors")
    if isinstance(errors, list) and len(errors) > 1:
        return f"{exc.message} (+{len(errors) - 1} more problem(s): prov inventory validate lists them)"
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

    src = None
    try:
        src = _source(file, git, ref, path)
        inv = inv_mod.load(src.path)
        with ProvClient() as client:
            plan, _world, _pw = build_plan(client, inv, source=src.source, origin=src.origin)
    except ProvError as exc:
        raise _failed(exc) from None
    finally:
        if src:
            src.cleanup()
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


def _names(items: list[str]) -> str:
    more = f", +{len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def disruptions(plan: Plan) -> list[str]:
    """What in the plan powers, installs or deletes: each a phrase for the question (empty: nothing)."""
    installs = [a.name for a in plan.actions if a.op == "install"]  # powers the host on, wipes its disk
    starts = [a.key for a in plan.actions if a.op == "create-guest"]  # defines and starts a VM
    deletes = [a.key for a in plan.actions if a.op in ("delete", "delete-guest")]
    out = []
    if installs:
        out.append(f"installs {len(installs)} host(s) ({_names(installs)})")
    if starts:
        out.append(f"starts {len(starts)} guest(s) ({_names(starts)})")
    if deletes:
        out.append(f"deletes {len(deletes)} object(s) ({_names(deletes)})")
    return out


def _confirm(plan: Plan, yes: bool, output: OutputFormat, no_headers: bool) -> None:
    """Terraform's question: on a terminal "Type yes to apply" (only ``yes`` goes on); off a terminal
    a plan that powers, installs or deletes needs ``--yes``, any other goes on as a pipeline expects."""
    if yes:
        return
    what = disruptions(plan)
    if not sys.stdin.isatty():
        if what:
            raise fail(f"the plan {' and '.join(what)}: not confirmed (stdin is not a terminal; "
                       "add --yes to apply without asking)", exitcodes.NOT_CONFIRMED)
        return
    from provisioner.gitops.plan import render_text

    if output in (OutputFormat.table, OutputFormat.wide):
        sys.stdout.write(render_text(plan))
        sys.stdout.flush()
    else:  # stdout stays the document a script asked for
        sys.stderr.write(render_text(plan))
    it = f": it {' and '.join(what)}" if what else ""
    sys.stderr.write(f"\nDo you want to perform these actions?\n  prov will perform the actions described above{it}."
                     "\n  Only 'yes' will be accepted to approve.\n\n  Type yes to apply: ")
    sys.stderr.flush()
    if sys.stdin.readline().strip() != "yes":
        raise fail("Apply cancelled: the answer was not 'yes'; nothing was changed", exitcodes.NOT_CONFIRMED)


def _allowed(plan: Plan, allow_delete: bool) -> None:
    destructive = [a.key for a in plan.actions if a.destructive]
    if destructive and not allow_delete:
        raise fail(f"the plan deletes {len(destructive)} object(s) ({_names(destructive)}); "
                   "re-run with --allow-delete to allow it", exitcodes.ERROR)


@app.command("apply")
def apply_cmd(
    file: Path | None = FileOpt,
    git: str | None = GitOpt,
    ref: str = RefOpt,
    path: str = PathOpt,
    plan_file: Path | None = typer.Option(None, "--plan-file",
                                          help="apply this saved plan, only if still current (its inventory "
                                               "is read from where prov plan read it: -f/--git not needed)"),
    allow_delete: bool = typer.Option(False, "--allow-delete", help="allow the plan to delete objects"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="hosts worked on at once"),
    wait: bool = typer.Option(True, "--wait/--no-wait",
                              help="wait for the install/configure tasks to end (--no-wait: only start them)"),
    yes: bool = typer.Option(False, "--yes", "-y",
                             help="apply without asking (off a terminal, a plan that installs, starts guests "
                                  "or deletes needs it)"),
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Make the controller match the inventory; asks "Type yes" on a terminal. Exit 0 when every action
    succeeded, 1 when some failed, 11 when not confirmed."""
    from provisioner.errors import Conflict
    from provisioner.gitops import inventory as inv_mod
    from provisioner.gitops.apply import apply_plan, build_plan, check_saved_plan
    from provisioner.gitops.plan import inventory_digest

    src = None
    try:
        saved = _saved_plan(plan_file) if plan_file is not None else None  # read before the controller is asked
        src = _planned_source(saved) if saved is not None and not file and not git else _source(file, git, ref, path)
        inv = inv_mod.load(src.path)
        if saved is not None and saved.inventory_digest != inventory_digest(inv):
            raise Conflict(reason=f"the saved plan is stale: the inventory changed since the plan was made "
                                  f"({src.source}); run prov plan again")
        commit = src.origin.get("commit") if src.checkout else None
        with ProvClient(context=f"apply {commit}" if commit else "apply") as client:
            plan, world, passwords = build_plan(client, inv, source=src.source, origin=src.origin)
            if saved is not None:
                check_saved_plan(saved, plan)
            if plan.changed:
                _allowed(plan, allow_delete)
                _confirm(plan, yes, output, no_headers)

            def show(o: Outcome) -> None:
                if output == OutputFormat.table:
                    mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[o.status]
                    msg = f": {o.message}" if o.message else ""
                    sys.stderr.write(f"{o.action.op:>12} {o.action.key} ... {mark}{msg}\n")

            # a no-op apply runs too: it records the baseline (an object deleted by hand and removed
            # from the inventory is then no drift any more)
            result = apply_plan(client, inv, plan, passwords, world, allow_delete=allow_delete,
                                concurrency=concurrency, wait=wait, commit=commit, progress=show)
    except ProvError as exc:
        raise _failed(exc) from None
    finally:
        if src:
            src.cleanup()
    _show_result(plan, result, output, no_headers)


def _show_result(plan: Plan, result: ApplyResult, output: OutputFormat, no_headers: bool) -> None:
    if output == OutputFormat.table:
        if not plan.changed:
            sys.stdout.write("No changes. The controller matches the inventory.\n")
        else:
            sys.stdout.write(result.summary() + "\n")
    elif output.tabular:
        emit(result.to_dict()["results"], output, columns=["op", "object", "status", "message", "task"],
             headers=not no_headers)
    else:
        emit(result.to_dict(), output)
    if result.record_error:
        raise fail(f"the apply could not be recorded as the baseline: {result.record_error}", exitcodes.ERROR)
    raise typer.Exit(exitcodes.ERROR if result.failed else exitcodes.OK)


@inventory_app.command("schema")
def schema_cmd() -> None:
    """Print the inventory's JSON Schema (for editors and CI validation)."""
    from provisioner.gitops import inventory as inv_mod

    sys.stdout.write(json.dumps(inv_mod.json_schema(), indent=2) + "\n")


@inventory_app.command("validate")
def validate_cmd(
    file: Annotated[Path, typer.Argument(help="inventory file or directory")],
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Check an inventory offline: schema, duplicates, references, no inline secrets. Every problem of
    every file in one run, each as FILE:LINE: reason. Exit 0: valid; 1: problems."""
    from provisioner.gitops import inventory as inv_mod

    try:
        inv = inv_mod.load(file)
    except ProvError as exc:
        problems = exc.details.get("problems") or [{"file": str(file), "line": 0, "field": "",
                                                    "reason": exc.message}]
        if output in (OutputFormat.table, OutputFormat.wide):
            for line in exc.details.get("errors") or [exc.message]:
                sys.stderr.write(f"error: {line}\n")
        elif output.tabular:
            emit(problems, output, columns=PROBLEM_COLUMNS, headers=not no_headers)
        else:
            emit({"ok": False, "errors": problems}, output)
        raise typer.Exit(exitcodes.ERROR) from None
    counts = {"racks": len(inv.racks), "hosts": len(inv.hosts), "profiles": len(inv.profiles)}
    if output.tabular:
        sys.stdout.write(f"ok: {counts['racks']} racks, {counts['hosts']} hosts, {counts['profiles']} profiles\n")
    else:
        emit({"ok": True, "errors": [], **counts}, output)


from provisioner.cli import gitops_drift  # noqa: E402, F401  (registers prov drift)
