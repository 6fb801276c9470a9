"""``prov rack add|list|show|rm``: racks through the REST API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli.groups import rack_app
from provisioner.cli.output import (
    Columns,
    NoHeadersOpt,
    OutputFormat,
    OutputOpt,
    YesOpt,
    client,
    confirm,
    emit,
    handle_errors,
    items,
)

RACK_COLUMNS = ["name", "site", "size_u", "host_count"]
RACK_HOST_COLUMNS = Columns(table=("name", "u_position", "state", "power_state", "roles"), drop=("roles",))


def rack_path(name: str) -> str:
    return f"/api/v1/racks/{quote(name, safe='')}"


@rack_app.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="rack name (RFC 1123 label)")],
    site: Annotated[str, typer.Option("--site", help="site or room")] = "",
    size_u: Annotated[int, typer.Option("--size-u", "--size", min=1, max=64, help="height in U")] = 42,
    output: OutputFormat = OutputOpt,
) -> None:
    """Create a rack."""
    with client() as c:
        rack = c.post("/api/v1/racks", json={"name": name, "site": site, "size_u": size_u})
    emit(rack, output)


@rack_app.command("list")
@handle_errors
def list_(
    site: Annotated[str | None, typer.Option("--site", help="only racks at this site")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="page size")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many racks")] = 0,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List racks."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if site:
        params["site"] = site
    with client() as c:
        rows = items(c.get("/api/v1/racks", params=params))
    columns = [col for col in RACK_COLUMNS if not rows or col in rows[0]] or None
    emit(rows, output, columns=columns, headers=not no_headers)


@rack_app.command("show")
@handle_errors
def show(
    name: Annotated[str, typer.Argument(help="rack name or id")],
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Show a rack and the hosts in it."""
    with client() as c:
        rack = c.get(rack_path(name))
        hosts = items(c.get("/api/v1/hosts", params={"rack": rack.get("name", name), "limit": 1000, "sort": "name"}))
    if output in (OutputFormat.name, OutputFormat.csv):
        emit(rack, output, headers=not no_headers)
        return
    if not output.tabular:
        emit({**rack, "hosts": hosts}, output)
        return
    emit(rack, output)
    if hosts:
        emit(hosts, output, columns=RACK_HOST_COLUMNS, title=f"hosts in {rack.get('name', name)}",
             headers=not no_headers)
    else:
        typer.echo("no hosts in this rack")


@rack_app.command("rm")
@handle_errors
def rm(name: Annotated[str, typer.Argument(help="rack name or id")], yes: YesOpt = False) -> None:
    """Delete an empty rack."""
    confirm(f"Delete rack {name}?", yes)
    with client() as c:
        c.delete(rack_path(name))
    typer.echo(f"rack {name} deleted")
