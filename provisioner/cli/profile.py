"""``prov profile add|list|show|set|rm``: OS profiles through the REST API."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli.choices import ContainerEngine, InstallMethod, OsFamily, Playbook, values
from provisioner.cli.groups import profile_app
from provisioner.cli.host import check
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
from provisioner.errors import InvalidInput

PROFILE_COLUMNS = Columns(table=("name", "os_family", "install_method", "container_engine", "playbooks"),
                          drop=("playbooks", "container_engine"))
INSTALL_METHODS = tuple(values(list(InstallMethod)))
OS_FAMILIES = tuple(values(list(OsFamily)))
ENGINES = tuple(values(list(ContainerEngine)))


def profile_path(name: str) -> str:
    return f"/api/v1/profiles/{quote(name, safe='')}"


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``--param key=value``; the value is read as JSON when it parses (numbers, lists), else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(field="--param", reason=f"expected key=value, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _choice(field: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidInput(field=field, reason=f"must be one of {', '.join(allowed)} (got {value!r})")
    return value


def profile_body(**fields: Any) -> dict[str, Any]:
    fields = {k: (v.value if isinstance(v, enum.Enum) else values(v) if k == "playbooks" and v else v)
              for k, v in fields.items()}
    body: dict[str, Any] = {}
    _choice("--os-family", fields.get("os_family"), OS_FAMILIES)
    _choice("--install-method", fields.get("install_method"), INSTALL_METHODS)
    _choice("--container-engine", fields.get("container_engine"), ENGINES)
    for key, val in fields.items():
        if val is None:
            continue
        if key == "params":
            body["params"] = parse_params(val)
        else:
            body[key] = val
    return body


OsFamilyOpt = Annotated[OsFamily | None, typer.Option("--os-family", help="the installed OS's family")]
MethodOpt = Annotated[InstallMethod | None, typer.Option("--install-method", help="how the OS gets on the disk")]
KernelOpt = Annotated[str | None, typer.Option("--kernel-url", help="installer kernel URL")]
InitrdOpt = Annotated[str | None, typer.Option("--initrd-url", help="installer initrd URL")]
ImageOpt = Annotated[str | None, typer.Option("--image-url", help="disk image URL (install method image)")]
ChecksumOpt = Annotated[str | None, typer.Option("--image-checksum", help="sha256:<hex> of the image")]
TemplateOpt = Annotated[str | None, typer.Option("--template", help="override the method's default template")]
KargsOpt = Annotated[str | None, typer.Option("--kernel-args", help="extra kernel command line")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="template parameter key=value (repeatable)")]
PlaybookOpt = Annotated[
    list[Playbook] | None, typer.Option("--playbook", help="playbook to run after install (repeatable)")
]
EngineOpt = Annotated[ContainerEngine | None, typer.Option("--container-engine", help="container engine to install")]


@profile_app.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="profile name")],
    os_family: OsFamilyOpt = None,
    install_method: MethodOpt = None,
    kernel_url: KernelOpt = None,
    initrd_url: InitrdOpt = None,
    image_url: ImageOpt = None,
    image_checksum: ChecksumOpt = None,
    template: TemplateOpt = None,
    kernel_args: KargsOpt = None,
    param: ParamOpt = None,
    playbook: PlaybookOpt = None,
    container_engine: EngineOpt = None,
    output: OutputFormat = OutputOpt,
) -> None:
    """Create an OS profile."""
    body = {"name": check("name", "validate_slug", name)} | profile_body(
        os_family=os_family,
        install_method=install_method,
        kernel_url=kernel_url,
        initrd_url=initrd_url,
        image_url=image_url,
        image_checksum=image_checksum,
        template=template,
        kernel_args=kernel_args,
        params=param,
        playbooks=playbook,
        container_engine=container_engine,
    )
    with client() as c:
        prof = c.post("/api/v1/profiles", json=body)
    emit(prof, output)


@profile_app.command("list")
@handle_errors
def list_(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="page size")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many profiles")] = 0,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List OS profiles."""
    with client() as c:
        rows = items(c.get("/api/v1/profiles", params={"limit": limit, "offset": offset}))
    emit(rows, output, columns=PROFILE_COLUMNS, headers=not no_headers)


@profile_app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="profile name or id")], output: OutputFormat = OutputOpt) -> None:
    """Show one OS profile."""
    with client() as c:
        emit(c.get(profile_path(name)), output)


@profile_app.command("set")
@handle_errors
def set_(
    name: Annotated[str, typer.Argument(help="profile name or id")],
    os_family: OsFamilyOpt = None,
    install_method: MethodOpt = None,
    kernel_url: KernelOpt = None,
    initrd_url: InitrdOpt = None,
    image_url: ImageOpt = None,
    image_checksum: ChecksumOpt = None,
    template: TemplateOpt = None,
    kernel_args: KargsOpt = None,
    param: ParamOpt = None,
    playbook: PlaybookOpt = None,
    container_engine: EngineOpt = None,
    output: OutputFormat = OutputOpt,
) -> None:
    """Change a profile; only the options given change (--param/--playbook replace the whole set)."""
    body = profile_body(
        os_family=os_family,
        install_method=install_method,
        kernel_url=kernel_url,
        initrd_url=initrd_url,
        image_url=image_url,
        image_checksum=image_checksum,
        template=template,
        kernel_args=kernel_args,
        params=param,
        playbooks=playbook,
        container_engine=container_engine,
    )
    if not body:
        raise InvalidInput(field="options", reason="nothing to change")
    with client() as c:
        emit(c.patch(profile_path(name), json=body), output)


@profile_app.command("rm")
@handle_errors
def rm(name: Annotated[str, typer.Argument(help="profile name or id")], yes: YesOpt = False) -> None:
    """Delete a profile that no host uses."""
    confirm(f"Delete profile {name}?", yes)
    with client() as c:
        c.delete(profile_path(name))
    typer.echo(f"profile {name} deleted")
