"""``prov task list|show|cancel``: background tasks (read-only in the API, plus cancel)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provisioner.cli.choices import TaskStatus
from provisioner.cli.groups import task_app
from provisioner.cli.output import Columns, NoHeadersOpt, OutputFormat, OutputOpt, client, emit, handle_errors, items
from provisioner.client import ApiError

TASK_COLUMNS = Columns(table=("id", "kind", "host", "status", "step", "progress", "created_at", "error"),
                       drop=("created_at", "step", "progress"))


def _row(t: dict[str, Any]) -> dict[str, Any]:
    host = t.get("host")
    return {**t, "host": host.get("name") if isinstance(host, dict) else (host or t.get("host_id"))}


@task_app.command("list")
@handle_errors
def list_(
    host: Annotated[str | None, typer.Option("--host", help="only tasks of this host")] = None,
    status: Annotated[TaskStatus | None, typer.Option("--status", help="only tasks in this status")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="install, power, configure...")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="page size")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many tasks")] = 0,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List tasks, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, val in (("host", host), ("status", status), ("kind", kind)):
        if val:
            params[key] = val
    with client() as c:
        rows = items(c.get("/api/v1/tasks", params=params))
    if output.tabular:
        emit([_row(t) for t in rows], output, columns=TASK_COLUMNS, headers=not no_headers)
    else:
        emit(rows, output)


@task_app.command("show")
@handle_errors
def show(task_id: Annotated[int, typer.Argument(help="task id")], output: OutputFormat = OutputOpt) -> None:
    """Show one task with its params, result and error."""
    with client() as c:
        emit(c.get(f"/api/v1/tasks/{task_id}"), output)


@task_app.command("cancel")
@handle_errors
def cancel(task_id: Annotated[int, typer.Argument(help="task id")], output: OutputFormat = OutputOpt) -> None:
    """Ask a pending or running task to stop."""
    with client() as c:
        try:
            task = c.post(f"/api/v1/tasks/{task_id}/cancel")
        except ApiError as exc:
            if exc.details.get("http_status") == 405:  # a controller without the cancel endpoint
                raise ApiError("this controller cannot cancel tasks (no POST /api/v1/tasks/{id}/cancel)") from None
            raise
    if output == OutputFormat.table:
        status = task.get("status", "cancelling") if isinstance(task, dict) else "cancelling"
        typer.echo(f"task {task_id}: {status}")
    else:
        emit(task, output)
