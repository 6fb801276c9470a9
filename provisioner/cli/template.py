"""``prov template list|show|render|upload``: review and add install and boot templates."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

import typer

from provisioner.cli import exitcodes
from provisioner.cli.choices import TemplateKind
from provisioner.cli.groups import template_app
from provisioner.cli.output import Columns, NoHeadersOpt, OutputFormat, OutputOpt, client, emit, fail, handle_errors

KINDS_HELP = "template kind"
TEMPLATE_COLUMNS = Columns(table=("kind", "name", "source", "overrides_builtin", "ok", "error"),
                           drop=("overrides_builtin", "source"))


@template_app.command("list")
@handle_errors
def list_cmd(
    kind: TemplateKind | None = typer.Option(None, "--kind", help="only templates of this kind"),
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List templates (shipped and your own) and whether they passed their check."""
    params = {"kind": kind.value} if kind else None
    with client() as c:
        data = c.get("/api/v1/templates", params=params)
    emit(data["data"], output, columns=TEMPLATE_COLUMNS, headers=not no_headers)


@template_app.command("show")
@handle_errors
def show_cmd(
    kind: TemplateKind = typer.Argument(..., help=KINDS_HELP),
    name: str = typer.Argument(..., help="template name, e.g. default"),
) -> None:
    """Print a template's source."""
    with client() as c:
        sys.stdout.write(c.get(f"/api/v1/templates/{kind.value}/{quote(name, safe='')}"))


@template_app.command("render")
@handle_errors
def render_cmd(
    kind: TemplateKind = typer.Argument(..., help=KINDS_HELP),
    host: str = typer.Option(..., "--host", help="host name or id"),
    strict: bool = typer.Option(False, "--strict", help=f"exit {exitcodes.WARNED} when there are warnings"),
) -> None:
    """Print what HOST would get for KIND right now (the install token is a placeholder).

    Warnings go to stderr, one ``warning:`` line each: a file the host's profile never uses,
    another OS family's installer, a controller URL no machine reaches, no SSH key, a
    local-boot config. They do not change the exit code unless --strict is given.
    """
    with client() as c:
        got = c.get(f"/api/v1/hosts/{quote(host, safe='')}/preview/{kind.value}")
    sys.stdout.write(got["text"])
    sys.stdout.flush()
    warnings = got.get("warnings") or []
    for w in warnings:
        sys.stderr.write(f"warning: {' '.join(str(w.get('message', '')).split())}\n")
    sys.stderr.flush()
    if strict and warnings:
        raise typer.Exit(exitcodes.WARNED)


@template_app.command("upload")
@handle_errors
def upload_cmd(
    kind: TemplateKind = typer.Argument(..., help=KINDS_HELP),
    name: str = typer.Argument(..., help="template name, e.g. rocky9 (stored as KIND/NAME.j2)"),
    file: Path = typer.Argument(..., exists=False, help="template file ('-' for stdin)"),
    output: OutputFormat = OutputOpt,
) -> None:
    """Upload a template; it is render-checked first and refused with the reason if it fails."""
    if str(file) == "-":
        body = sys.stdin.buffer.read()
    else:
        if not file.is_file():
            raise fail(f"{file}: no such file", exitcodes.USAGE)
        body = file.read_bytes()
    with client() as c:
        info = c.put(f"/api/v1/templates/{kind.value}/{quote(name, safe='')}", content=body,
                     headers={"Content-Type": "text/plain"})
    emit(info, output)
