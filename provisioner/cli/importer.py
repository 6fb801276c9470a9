"""``prov host import FILE.yaml|FILE.csv``: enrol many hosts at once, all or nothing.

Everything is checked before anything is written: every row against the API's
own request model (provisioner.schemas.HostCreate, so the rules are the
server's), duplicates inside the file (names, MACs, BMC address+port), then
against the controller (racks and profiles exist, names/MACs/BMC endpoints not
taken). Every problem is reported as ``FILE:LINE: path: reason``. Only a file
without problems is imported; if the controller still refuses a row (another
client won a race), the hosts and racks created so far are deleted again.

The file formats (YAML, CSV) are described and parsed in import_formats.py, the
checks live in import_checks.py; this module is the command and the all-or-nothing write.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import host_app
from provisioner.cli.output import OutputFormat, OutputOpt, client, emit, fail, handle_errors
from provisioner.errors import ProvError

if TYPE_CHECKING:
    from provisioner.cli.import_formats import Problem
    from provisioner.client import ProvClient


def _report(label: str, problems: list[Problem]) -> None:
    for p in sorted(problems, key=lambda p: p.line):
        typer.echo(f"{label}:{p.line}: {p.path}: {' '.join(p.reason.split())}", err=True)


@host_app.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="hosts in YAML (.yaml/.yml) or CSV (.csv)", dir_okay=False)],
    check_only: Annotated[bool, typer.Option("--check", help="validate everything, import nothing")] = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Enrol many hosts from a YAML or CSV file: everything is checked first, then all or nothing."""
    # the parsers and the API's request models (yaml, pydantic, SQLModel) load only when a file is imported
    from provisioner.cli.import_formats import FileError, parse_csv, parse_yaml
    from provisioner.gitops import yamlsafe

    label = str(file)
    try:
        text = yamlsafe.read_text(file)  # size-bounded, UTF-8 (a BOM, as spreadsheet exports write, is dropped)
    except OSError as exc:
        raise fail(f"{file}: {exc.strerror or exc}", exitcodes.USAGE) from None
    except yamlsafe.YamlError as exc:
        raise fail(f"{label}:{exc.line}: {exc.reason}", exitcodes.USAGE) from None
    try:
        parsed = parse_csv(text) if file.suffix.lower() == ".csv" else parse_yaml(text)
    except FileError as exc:
        raise fail(f"{label}:{exc.line}: {exc.reason}", exitcodes.USAGE) from None
    from provisioner.cli.import_checks import check_rows, check_server  # the models: once the file has parsed

    checked = check_rows(parsed, file.parent)
    hosts = [b for b in checked if "row" in b]
    racks = {b["name"]: b for b in checked if "row" not in b}
    with client() as c:
        if not parsed.problems:
            racks_to_create = check_server(c, parsed, checked)
        if parsed.problems:
            _report(label, parsed.problems)
            n = len(parsed.problems)
            summary = f"{label}: {n} problem{'s' if n != 1 else ''} found; nothing was imported"
            raise fail(summary, exitcodes.USAGE)
        if check_only:
            typer.echo(f"{label}: {len(hosts)} hosts and {len(racks_to_create)} new racks would be imported")
            return
        created = _create_all(c, label, [racks[r] for r in racks_to_create], hosts)
    if output == OutputFormat.table:
        names = ", ".join(h.get("name", "?") for h in created)
        typer.echo(f"imported {len(created)} hosts from {label}" + (f": {names}" if names else ""))
    else:
        emit(created, output)


def _create_all(
    c: ProvClient, label: str, racks: list[dict[str, Any]], hosts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    made_racks: list[str] = []
    made_hosts: list[dict[str, Any]] = []
    current = ""
    try:
        for rb in racks:
            current = f"racks {rb['name']}"
            c.post("/api/v1/racks", json=rb)
            made_racks.append(rb["name"])
        for hb in hosts:
            row = hb["row"]
            current = f"{label}:{row.line}: hosts[{row.index}]"
            made_hosts.append(c.post("/api/v1/hosts", json=hb["body"]))
    except ProvError as exc:
        _rollback(c, made_hosts, made_racks)
        raise type(exc)(f"{current}: {exc.message}; nothing was imported (rolled back)") from None
    except BaseException:
        _rollback(c, made_hosts, made_racks)
        raise
    return made_hosts


def _rollback(c: ProvClient, hosts: list[dict[str, Any]], racks: list[str]) -> None:
    for h in reversed(hosts):
        try:
            c.delete(f"/api/v1/hosts/{quote(str(h.get('name')), safe='')}")
        except ProvError as exc:
            typer.echo(f"warning: could not roll back host {h.get('name')}: {exc.message}", err=True)
    for name in reversed(racks):
        try:
            c.delete(f"/api/v1/racks/{quote(name, safe='')}")
        except ProvError as exc:
            typer.echo(f"warning: could not roll back rack {name}: {exc.message}", err=True)
