"""``prov host add|list|show|set|rm|history|maintain|unmaintain|abort``.

Every command is a client of the REST API. Input that can be checked here
(MACs, names, addresses, ports) is checked with the same rules the API uses
(provisioner.validators), so a typo fails at once with the option named, before
a request is sent. A BMC password is never taken as a command-line argument —
arguments are visible to every user in the process list — only from a file,
an environment variable, standard input or a hidden prompt.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

import typer

from provisioner.cli.choices import BmcKind, HostState, PowerState
from provisioner.cli.groups import host_app
from provisioner.cli.host_network import NetworkFileOpt, read_network_file
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

T = TypeVar("T")

HOST_COLUMNS = ["name", "rack", "u", "state", "power", "profile", "roles", "boot_mac", "bmc"]
# The table on a narrow terminal keeps name, state, power and the boot MAC whole; -o wide adds the rest.
HOST_TABLE = Columns(table=tuple(HOST_COLUMNS), wide=("id", "macs", "last_error", "updated_at"),
                     drop=("roles", "u", "profile", "bmc", "rack"))
EVENT_COLUMNS = ["created_at", "event", "from_state", "to_state", "actor", "message"]
# BMC kinds that authenticate with a password (libvirt and manual do not).
PASSWORD_KINDS = frozenset({"ipmi", "redfish"})
BMC_KINDS = tuple(k.value for k in BmcKind)


def host_path(name: str, *rest: str) -> str:
    return "/".join([f"/api/v1/hosts/{quote(name, safe='')}", *rest])


# The rules of provisioner.validators the CLI applies, by name: that module loads pydantic, so it is
# imported when a command checks its input, not when ``prov --help`` builds the command tree.
Rule = Literal["validate_hostname", "validate_slug", "normalize_mac", "validate_address", "validate_port"]


def check(field: str, rule: Rule, value: T) -> T:
    """Apply a validators rule; a ValueError becomes a one-line InvalidInput naming the option."""
    from provisioner import validators

    fn: Callable[[T], T] = getattr(validators, rule)
    try:
        return fn(value)
    except ValueError as exc:
        raise InvalidInput(field=field, reason=str(exc)) from None


# --------------------------------------------------------------------------- password input
def read_password(file: Path | None, env: str | None, stdin: bool, *, prompt: bool) -> str | None:
    """The BMC password from exactly one source; a hidden prompt if none and interactive."""
    given = [name for name, v in (("--bmc-password-file", file), ("--bmc-password-env", env)) if v] + (
        ["--bmc-password-stdin"] if stdin else []
    )
    if len(given) > 1:
        raise InvalidInput(field="bmc password", reason=f"give only one of {', '.join(given)}")
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise InvalidInput(field="--bmc-password-file", reason=f"{file}: {exc.strerror or exc}") from None
        secret = text.splitlines()[0] if text else ""  # the first line; editors add a newline
    elif env:
        if env not in os.environ:
            raise InvalidInput(field="--bmc-password-env", reason=f"environment variable {env} is not set")
        secret = os.environ[env]
    elif stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    elif prompt and sys.stdin.isatty():
        secret = str(typer.prompt("BMC password", hide_input=True))
    else:
        return None
    if not secret:
        raise InvalidInput(field=given[0] if given else "bmc password", reason="password is empty")
    register_secret(secret)
    return secret


def register_secret(secret: str) -> None:
    """Masked in any message this process prints (lazy: provisioner.secret_store loads the settings stack)."""
    from provisioner import secret_store

    secret_store.register(secret)


PwFileOpt = Annotated[
    Path | None,
    typer.Option("--bmc-password-file", help="read the BMC password from the first line of this file", dir_okay=False),
]
PwEnvOpt = Annotated[
    str | None, typer.Option("--bmc-password-env", metavar="VAR", help="read the BMC password from this env variable")
]
PwStdinOpt = Annotated[bool, typer.Option("--bmc-password-stdin", help="read the BMC password from standard input")]


def bmc_body(
    kind: str | None,
    address: str | None,
    port: int | None,
    user: str | None,
    password: str | None,
) -> dict[str, Any]:
    bmc: dict[str, Any] = {}
    if kind is not None:
        if kind not in BMC_KINDS:
            raise InvalidInput(field="--bmc-kind", reason=f"must be one of {', '.join(BMC_KINDS)} (got {kind!r})")
        bmc["kind"] = kind
    if address is not None:
        bmc["address"] = check("--bmc-address", "validate_address", address)
    if port is not None:
        bmc["port"] = check("--bmc-port", "validate_port", port)
    if user is not None:
        bmc["username"] = user
    if password is not None:
        bmc["password"] = password
    return bmc


def nics_body(macs: list[str], boot_mac: str | None) -> list[dict[str, Any]]:
    normalized = [check("--mac", "normalize_mac", m) for m in macs]
    if len(set(normalized)) != len(normalized):
        raise InvalidInput(field="--mac", reason="the same MAC is given twice")
    boot: str | None = normalized[0] if normalized else None
    if boot_mac:
        boot = check("--boot-mac", "normalize_mac", boot_mac)
    if boot is not None and boot not in normalized:
        raise InvalidInput(field="--boot-mac", reason=f"{boot} is not one of the --mac addresses")
    return [{"mac": m, "boot": m == boot} for m in normalized]


def flat_host(h: dict[str, Any]) -> dict[str, Any]:
    """One table row for a host, whatever nesting the API uses for rack/profile/bmc/nics."""
    nics = h.get("nics") or []
    boot = next((n.get("mac") for n in nics if n.get("boot")), None) or (nics[0].get("mac") if nics else None)
    raw_bmc = h.get("bmc")
    bmc: dict[str, Any] = raw_bmc if isinstance(raw_bmc, dict) else {}
    kind = bmc.get("kind") or h.get("bmc_kind")
    addr = bmc.get("address") or h.get("bmc_address")
    port = bmc.get("port") or h.get("bmc_port")
    bmc_s = f"{kind} {addr}:{port}" if addr and port else (f"{kind} {addr}" if addr else kind)
    return {
        "name": h.get("name"),
        "rack": _name_of(h.get("rack")) or h.get("rack_id"),
        "u": h.get("u_position", h.get("u")),
        "state": h.get("state"),
        "power": h.get("power_state"),
        "profile": _name_of(h.get("profile")) or h.get("profile_id"),
        "roles": h.get("roles") or [],
        "boot_mac": boot,
        "bmc": bmc_s,
        "id": h.get("id"),
        "macs": [n.get("mac") for n in nics],
        "last_error": h.get("last_error"),
        "updated_at": h.get("updated_at"),
    }


def _name_of(v: Any) -> Any:
    return v.get("name") if isinstance(v, dict) else v


def _emit_host(host: dict[str, Any], output: OutputFormat) -> None:
    if output.tabular:
        emit([flat_host(host)], output, columns=HOST_TABLE)
    else:
        emit(host, output)


# --------------------------------------------------------------------------- commands
@host_app.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="host name (RFC 1123 label)")],
    rack: Annotated[str | None, typer.Option("--rack", help="rack name")] = None,
    u: Annotated[int | None, typer.Option("--u", "--u-position", min=1, help="lowest U the host occupies")] = None,
    mac: Annotated[list[str] | None, typer.Option("--mac", help="NIC MAC address (repeatable; first boots)")] = None,
    boot_mac: Annotated[str | None, typer.Option("--boot-mac", help="which --mac network-boots")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="where prov reaches the installed host over SSH")] = None,
    bmc_kind: Annotated[BmcKind | None, typer.Option(
        "--bmc-kind", help="how prov reaches the BMC [default: ipmi with --bmc-address, else manual]")] = None,
    bmc_address: Annotated[str | None, typer.Option("--bmc-address", help="BMC IP address or DNS name")] = None,
    bmc_port: Annotated[int | None, typer.Option("--bmc-port", help="BMC port (IPMI 623, Redfish 443)")] = None,
    bmc_user: Annotated[str | None, typer.Option("--bmc-user", help="BMC user name")] = None,
    bmc_password_file: PwFileOpt = None,
    bmc_password_env: PwEnvOpt = None,
    bmc_password_stdin: PwStdinOpt = False,
    profile: Annotated[str | None, typer.Option("--profile", help="OS profile name")] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="role tag (repeatable)")] = None,
    network_file: NetworkFileOpt = None,
    output: OutputFormat = OutputOpt,
) -> None:
    """Enrol a host."""
    body: dict[str, Any] = {"name": check("name", "validate_hostname", name)}
    if rack is not None:
        body["rack"] = check("--rack", "validate_slug", rack)
    if u is not None:
        body["u_position"] = u
    net = read_network_file(network_file) if network_file is not None else {}
    if "nics" in net and (mac or boot_mac):
        raise InvalidInput(field="--mac", reason="the NICs come from --network-file (its nics)")
    body["nics"] = net.pop("nics") if "nics" in net else nics_body(mac or [], boot_mac)
    body.update(net)
    if ip is not None:
        body["ip_address"] = ip  # checked by the API (422 naming ip_address)
    needs_pw = (bmc_kind.value if bmc_kind else "ipmi") in PASSWORD_KINDS and bmc_address is not None
    password = read_password(bmc_password_file, bmc_password_env, bmc_password_stdin, prompt=needs_pw)
    # No BMC option at all: no "bmc" sent, and the API makes the host 'manual' (powered by hand).
    if bmc := bmc_body(bmc_kind.value if bmc_kind else None, bmc_address, bmc_port, bmc_user, password):
        body["bmc"] = bmc
    if profile is not None:
        body["profile"] = check("--profile", "validate_slug", profile)
    body["roles"] = [check("--role", "validate_slug", r) for r in role or []]
    with client() as c:
        host = c.post("/api/v1/hosts", json=body)
    _emit_host(host, output)


@host_app.command("list")
@handle_errors
def list_(
    state: Annotated[HostState | None, typer.Option("--state", help="only hosts in this state")] = None,
    rack: Annotated[str | None, typer.Option("--rack", help="only hosts in this rack")] = None,
    role: Annotated[str | None, typer.Option("--role", help="only hosts with this role")] = None,
    power: Annotated[PowerState | None, typer.Option("--power", "--power-state", help="only this power state")] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="sort field, '-' prefix for descending")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="page size")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many hosts")] = 0,
    all_pages: Annotated[bool, typer.Option("--all", help="every matching host, page by page")] = False,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List hosts (filter by state, rack, role, power state)."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    filters = (("state", state), ("rack", rack), ("role", role), ("power_state", power), ("sort", sort))
    for key, val in filters:
        if val:
            params[key] = val
    with client() as c:
        resp = c.get("/api/v1/hosts", params=params)
        rows = items(resp)
        total = resp.get("count") if isinstance(resp, dict) else None
        while all_pages and rows and isinstance(total, int) and offset + len(rows) < total:
            page = items(c.get("/api/v1/hosts", params={**params, "offset": offset + len(rows)}))
            if not page:
                break
            rows.extend(page)
    if not output.tabular:
        emit(rows, output)
        return
    emit([flat_host(h) for h in rows], output, columns=HOST_TABLE, headers=not no_headers)
    if isinstance(total, int) and total > len(rows) and output in (OutputFormat.table, OutputFormat.wide):
        typer.echo(f"{len(rows)} of {total} hosts shown (--all, or --offset/--limit, for more)")


@host_app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="host name or id")], output: OutputFormat = OutputOpt) -> None:
    """Show one host."""
    with client() as c:
        host = c.get(host_path(name))
    emit(host, output)


@host_app.command("set")
@handle_errors
def set_(
    name: Annotated[str, typer.Argument(help="host name or id")],
    rack: Annotated[str | None, typer.Option("--rack", help="move to this rack")] = None,
    u: Annotated[int | None, typer.Option("--u", "--u-position", min=1, help="lowest U the host occupies")] = None,
    mac: Annotated[list[str] | None, typer.Option("--mac", help="replace the NICs (repeatable; first boots)")] = None,
    boot_mac: Annotated[str | None, typer.Option("--boot-mac", help="which --mac network-boots")] = None,
    bmc_kind: Annotated[BmcKind | None, typer.Option("--bmc-kind", help="how prov reaches the BMC")] = None,
    bmc_address: Annotated[str | None, typer.Option("--bmc-address", help="BMC IP address or DNS name")] = None,
    bmc_port: Annotated[int | None, typer.Option("--bmc-port", help="BMC port (IPMI 623, Redfish 443)")] = None,
    bmc_user: Annotated[str | None, typer.Option("--bmc-user", help="BMC user name")] = None,
    bmc_password_file: PwFileOpt = None,
    bmc_password_env: PwEnvOpt = None,
    bmc_password_stdin: PwStdinOpt = False,
    profile: Annotated[str | None, typer.Option("--profile", help="OS profile name")] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="replace the roles (repeatable)")] = None,
    add_role: Annotated[list[str] | None, typer.Option("--add-role", help="add a role (repeatable)")] = None,
    rm_role: Annotated[list[str] | None, typer.Option("--rm-role", help="remove a role (repeatable)")] = None,
    network_file: NetworkFileOpt = None,
    output: OutputFormat = OutputOpt,
) -> None:
    """Change a host's fields; only the options given change."""
    body: dict[str, Any] = {}
    if rack is not None:
        body["rack"] = check("--rack", "validate_slug", rack)
    if u is not None:
        body["u_position"] = u
    net = read_network_file(network_file) if network_file is not None else {}
    if "nics" in net and (mac or boot_mac):
        raise InvalidInput(field="--mac", reason="the NICs come from --network-file (its nics)")
    body.update(net)
    if mac:
        body["nics"] = nics_body(mac, boot_mac)
    elif boot_mac:
        raise InvalidInput(field="--boot-mac", reason="give the NIC list with --mac as well")
    password = read_password(bmc_password_file, bmc_password_env, bmc_password_stdin, prompt=False)
    bmc = bmc_body(bmc_kind.value if bmc_kind else None, bmc_address, bmc_port, bmc_user, password)
    if bmc:
        body["bmc"] = bmc
    if profile is not None:
        body["profile"] = check("--profile", "validate_slug", profile)
    if role is not None and (add_role or rm_role):
        raise InvalidInput(field="--role", reason="use either --role or --add-role/--rm-role")
    with client() as c:
        if role is not None:
            body["roles"] = [check("--role", "validate_slug", r) for r in role]
        elif add_role or rm_role:
            adds = [check("--add-role", "validate_slug", r) for r in add_role or []]
            drops = {check("--rm-role", "validate_slug", r) for r in rm_role or []}

            def with_roles(current: dict[str, Any]) -> dict[str, Any]:
                roles = list(current.get("roles") or [])
                return {**body, "roles": [r for r in dict.fromkeys(roles + adds) if r not in drops]}

            # Read, change, PATCH with If-Match (re-read on 412): a role another client set meanwhile stays.
            _emit_host(c.update(host_path(name), with_roles), output)
            return
        if not body:
            raise InvalidInput(field="options", reason="nothing to change")
        host = c.patch(host_path(name), json=body)
    _emit_host(host, output)


@host_app.command("rm")
@handle_errors
def rm(name: Annotated[str, typer.Argument(help="host name or id")], yes: YesOpt = False) -> None:
    """Delete a host (its NICs go with it; its history is kept by the API's rules)."""
    confirm(f"Delete host {name}?", yes)
    with client() as c:
        c.delete(host_path(name))
    typer.echo(f"host {name} deleted")


@host_app.command("history")
@handle_errors
def history(
    name: Annotated[str, typer.Argument(help="host name or id")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="page size")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many events")] = 0,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """A host's event history (state changes, who, when, why)."""
    with client() as c:
        rows = items(c.get(host_path(name, "events"), params={"limit": limit, "offset": offset}))
    emit(rows, output, columns=Columns(table=tuple(EVENT_COLUMNS), drop=("actor", "from_state")),
         headers=not no_headers)


def _action(name: str, event: str, reason: str | None, output: OutputFormat) -> None:
    body = {"event": event, "message": reason} if reason else {"event": event}
    with client() as c:
        host = c.post(host_path(name, "transition"), json=body)
    if output == OutputFormat.table:
        typer.echo(f"host {host.get('name', name)} is now {host.get('state', '?')}")
    elif output.tabular:
        _emit_host(host, output)
    else:
        emit(host, output)


ReasonOpt = Annotated[str | None, typer.Option("--reason", help="recorded in the host's history")]
NameArg = Annotated[str, typer.Argument(help="host name or id")]


@host_app.command("maintain")
@handle_errors
def maintain(name: NameArg, reason: ReasonOpt = None, output: OutputFormat = OutputOpt) -> None:
    """Take a host out of service (maintenance)."""
    _action(name, "maintain", reason, output)


@host_app.command("unmaintain")
@handle_errors
def unmaintain(name: NameArg, reason: ReasonOpt = None, output: OutputFormat = OutputOpt) -> None:
    """Return a host from maintenance to the state it was in."""
    _action(name, "unmaintain", reason, output)


@host_app.command("abort")
@handle_errors
def abort(name: NameArg, reason: ReasonOpt = None, output: OutputFormat = OutputOpt) -> None:
    """Stop the host's current phase (install, configure...); it ends in that phase's failed state."""
    _action(name, "abort", reason, output)
