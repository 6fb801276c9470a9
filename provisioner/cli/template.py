"""``prov template list|show|render|upload``: review and add install and boot templates."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from provisioner.cli.groups import template_app
from provisioner.cli.output import OutputOpt, client, emit, fail, handle_errors

KINDS_HELP = "kickstart, preseed, autoinstall, ipxe, pxelinux or grub"


@template_app.command("list")
@handle_errors
def list_cmd(
    kind: str | None = typer.Option(None, "--kind", help=KINDS_HELP),
    output=OutputOpt,  # type: ignore[no-untyped-def]
) -> None:
    """List templates (shipped and your own) and whether they passed their check."""
    params = {"kind": kind} if kind else None
    with client() as c:
        data = c.get("/api/v1/templates", params=params)
    emit(data["data"], output, columns=["kind", "name", "source", "overrides_builtin", "ok", "error"])


@template_app.command("show")
@handle_errors
def show_cmd(kind: str = typer.Argument(..., help=KINDS_HELP), name: str = typer.Argument(...)) -> None:
    """Print a template's source."""
    with client() as c:
        sys.stdout.write(c.get(f"/api/v1/templates/{kind}/{name}"))


@template_app.command("render")
@handle_errors
def render_cmd(
    kind: str = typer.Argument(..., help=KINDS_HELP),
    host: str = typer.Option(..., "--host", help="host name or id"),
) -> None:
    """Print what HOST would get for KIND right now (the install token is a placeholder)."""
    with client() as c:
        sys.stdout.write(c.get(f"/api/v1/hosts/{host}/rendered/{kind}"))


@template_app.command("upload")
@handle_errors
def upload_cmd(
    kind: str = typer.Argument(..., help=KINDS_HELP),
    name: str = typer.Argument(..., help="template name, e.g. rocky9 (stored as KIND/NAME.j2)"),
    file: Path = typer.Argument(..., exists=False, help="template file ('-' for stdin)"),
    output=OutputOpt,  # type: ignore[no-untyped-def]
) -> None:
    """Upload a template; it is render-checked first and refused with the reason if it fails."""
    if str(file) == "-":
        body = sys.stdin.buffer.read()
    else:
        if not file.is_file():
            raise fail(f"{file}: no such file", 2)
        body = file.read_bytes()
    with client() as c:
        info = c.put(f"/api/v1/templates/{kind}/{name}", content=body, headers={"Content-Type": "text/plain"})
    emit(info, output)
