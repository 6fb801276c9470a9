"""``prov serve`` and ``prov token create|list|revoke``: the controller, and its API tokens.

``prov serve`` runs on the controller itself. ``prov token`` goes through the API
(an admin token) when the CLI is logged in to a controller, and works directly on
the database in PROV_DATA_DIR (or PROV_DATABASE_URL) otherwise or with ``--local``:
that is how the first tokens are made, and how an admin token lost is replaced. The
local work is in provisioner/server.py, imported inside each command so that no
other command loads the database layer or the web framework.
"""

from __future__ import annotations

import enum
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from provisioner.cli.groups import app, token_app
from provisioner.cli.output import OutputFormat, OutputOpt, client, emit, handle_errors, items
from provisioner.client import config_path
from provisioner.errors import NotFound

ROLES = ("api", "conductor", "boot")  # settings.ALL_ROLES, the Interface of issue 14


def _roles(text: str | None) -> list[str]:
    """``api,conductor`` -> ["api", "conductor"]; None or ``all``: [] (every role)."""
    if text is None or text.strip() == "all":
        return []
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise typer.BadParameter(f"{(unknown or [text])[0]!r} is not a role (api, conductor, boot, "
                                 "or several: api,conductor)", param_hint="--role")
    return list(dict.fromkeys(roles))


def _networks(values: list[str] | None) -> list[str]:
    from provisioner.schemas import validate_subnet

    out: list[str] = []
    for value in values or []:
        for part in (p for p in value.split(",") if p.strip()):
            try:
                out.append(validate_subnet(part))
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--network") from None
    return list(dict.fromkeys(out))


def check_topology(roles: list[str], workers: int | None, networks: list[str], *, embedded: bool) -> None:
    """Refuse what cannot work, in one line, before anything starts.

    SQLite is the embedded single-process mode: one ``prov serve`` runs every role (the README's
    first command). Separate role processes and several API workers share their state through
    PostgreSQL (PROV_DATABASE_URL): a conductor alone on SQLite would have nobody to share with."""
    every = not roles or set(roles) == set(ROLES)
    if networks and roles and "boot" not in roles:
        raise typer.BadParameter("a network is served by the boot role; add boot to --role", param_hint="--network")
    if workers is not None and workers > 1 and roles and "api" not in roles:
        raise typer.BadParameter("worker processes serve the API; add api to --role", param_hint="--workers")
    pg = "set PROV_DATABASE_URL=postgresql+psycopg://..."
    if embedded and workers is not None and workers > 1:
        raise typer.BadParameter(f"{workers} API worker processes need PostgreSQL ({pg}); SQLite is the "
                                 "single-process mode", param_hint="--workers")
    if embedded and not every:
        raise typer.BadParameter(f"{','.join(roles)} alone needs PostgreSQL ({pg}); on SQLite one prov serve "
                                 "runs every role (leave out --role)", param_hint="--role")


@app.command("serve")
@handle_errors
def serve(
    host: str = typer.Option(None, "--host", help="listen address (default 127.0.0.1 or PROV_HOST)"),
    port: int = typer.Option(None, "--port", help="API port (default 8700 or PROV_PORT)"),
    tftp_port: int = typer.Option(None, "--tftp-port", help="TFTP port (default 69 or PROV_TFTP_PORT)"),
    role: Annotated[str | None, typer.Option(
        "--role", metavar="ROLES", help="run only these roles: api, conductor, boot, or several (api,conductor); "
                                        "default: all three in one process. Needs PostgreSQL")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, max=64, help="API worker processes of the api role (default 1). Needs PostgreSQL")] = None,
    network: Annotated[list[str] | None, typer.Option(
        "--network", metavar="CIDR", help="a provisioning network the boot role serves (repeat for several); "
                                          "default: every rack's")] = None,
) -> None:
    """Run the controller: migrate the database, then serve the API and start the services.

    Without --role one process runs every role (the embedded default, on SQLite or PostgreSQL).
    With --role, any number of api, conductor and boot processes share one PostgreSQL."""
    from provisioner import server

    roles = _roles(role)
    networks = _networks(network)
    settings = server.settings_with(host=host, port=port, tftp_port=tftp_port,
                                    roles=",".join(roles) if role is not None else None,
                                    api_workers=workers,
                                    boot_networks=",".join(networks) if network is not None else None)
    check_topology(list(settings.roles), settings.api_workers, list(settings.boot_networks),
                   embedded=settings.embedded)
    token = server.prepare(settings)
    if token:
        # Printed once; only its sha256 is stored. stderr keeps it out of piped stdout logs.
        sys.stderr.write(
            "\nFirst start: an admin API token was created. It is shown only now:\n\n"
            f"    {token}\n\n"
            f"Use it with: prov login --url {settings.base_url}   (or export PROV_TOKEN=...)\n\n"
        )
        sys.stderr.flush()
    server.run(settings)


# --------------------------------------------------------------------------- prov token
# Through the API (admin token needed) when the CLI is logged in to a controller (PROV_URL,
# PROV_TOKEN, PROV_PROFILE or a client file from ``prov login``); otherwise, or with --local,
# on the database of this machine's controller (provisioner/server.py).


class Scope(enum.StrEnum):
    """provisioner/auth.py's SCOPES (spelled out: the CLI loads no database code for its help)."""

    admin = "admin"
    operator = "operator"
    viewer = "viewer"
    installer = "installer"
    metrics = "metrics"  # GET /metrics only: for a Prometheus scraper


TOKEN_COLUMNS = ["id", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked"]
LocalOpt = Annotated[bool, typer.Option(
    "--local", help="work on this machine's controller database, even when logged in to a controller")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _remote(local: bool) -> bool:
    if local:
        return False
    if any(os.environ.get(k) for k in ("PROV_URL", "PROV_TOKEN", "PROV_PROFILE")):
        return True
    return config_path().is_file()


def parse_duration(text: str) -> int:
    """``3600``, ``90m``, ``12h``, ``30d``, ``2w`` -> seconds."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise typer.BadParameter("a duration such as 3600, 90m, 12h, 30d or 2w", param_hint="--expires-in")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter("an ISO 8601 time such as 2027-01-31T00:00:00Z", param_hint="--expires-at") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _rows(data: Any) -> list[dict[str, Any]]:
    return [{k: row.get(k) for k in TOKEN_COLUMNS} for row in (data if isinstance(data, list) else [data])]


@token_app.command("create")
@handle_errors
def token_create(
    name: Annotated[str | None, typer.Option("--name", help="who the token is for (shows in history and audit); "
                                                           "default: its scopes")] = None,
    scope: Annotated[list[Scope] | None, typer.Option(
        "--scope", help="what it may do (repeat for several; default operator)")] = None,
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", metavar="DURATION", help="lifetime: 3600, 90m, 12h, 30d or 2w")] = None,
    expires_at: Annotated[str | None, typer.Option(
        "--expires-at", metavar="TIME", help="when it stops working (ISO 8601, UTC unless an offset is given)")] = None,
    local: LocalOpt = False,
    output: Annotated[OutputFormat | None, typer.Option(
        "--output", "-o", help="json or yaml: the token's row with the token; default: the token alone")] = None,
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    scopes = [str(s) for s in dict.fromkeys(scope or [Scope.operator])]
    name = name or "-".join(scopes)
    if len(name) > 64:
        raise typer.BadParameter("1-64 characters", param_hint="--name")
    if expires_in is not None and expires_at is not None:
        raise typer.BadParameter("give --expires-in or --expires-at, not both", param_hint="--expires-in")
    seconds = parse_duration(expires_in) if expires_in is not None else None
    when = _parse_time(expires_at) if expires_at is not None else None
    if _remote(local):
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if seconds is not None:
            body["expires_in"] = seconds
        if when is not None:
            body["expires_at"] = when.isoformat()
        with client() as c:
            created = c.post("/api/v1/tokens", json=body)
    else:
        from provisioner import server

        if seconds is not None:
            when = datetime.now(UTC) + timedelta(seconds=seconds)
        created = server.create_token(name, scopes=scopes, expires_at=when)
    if output is None:
        sys.stdout.write(str(created["token"]) + "\n")
    else:
        emit({**_rows(created)[0], "token": created["token"]}, output)


@token_app.command("list")
@handle_errors
def token_list(local: LocalOpt = False, output: OutputFormat = OutputOpt) -> None:
    """API tokens: id, name, scopes, expiry, last use (never the tokens: only their hashes are stored)."""
    if _remote(local):
        with client() as c:
            rows = _rows(items(c.get("/api/v1/tokens", params={"limit": 1000})))
    else:
        from provisioner import server

        rows = _rows(server.list_tokens())
    emit(rows, output, columns=TOKEN_COLUMNS)


def _revoke_remote(ident: str) -> list[dict[str, Any]]:
    with client() as c:
        if ident.isascii() and ident.isdigit():
            ids = [int(ident)]
        else:
            ids = [int(t["id"]) for t in items(c.get("/api/v1/tokens", params={"limit": 1000}))
                   if t.get("name") == ident]
            if not ids:
                raise NotFound(kind="token", name=ident)
        for token_id in ids:
            c.delete(f"/api/v1/tokens/{token_id}")
        return [c.get(f"/api/v1/tokens/{token_id}") for token_id in ids]


@token_app.command("revoke")
@handle_errors
def token_revoke(ident: Annotated[str, typer.Argument(help="token id, or a name (revokes every token of that name)")],
                 local: LocalOpt = False, output: OutputFormat = OutputOpt) -> None:
    """Revoke API tokens: refused at once by the controller that revoked it, within 10 s by any other."""
    if _remote(local):
        rows = _rows(_revoke_remote(ident))
    else:
        from provisioner import server

        rows = _rows(server.revoke_tokens(ident))
    emit(rows, output, columns=TOKEN_COLUMNS)
