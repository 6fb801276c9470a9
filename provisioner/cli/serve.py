"""``prov serve`` and ``prov token create|list|revoke``: the commands that run on the controller itself.

They work directly on the database in PROV_DATA_DIR (or PROV_DATABASE_URL);
every other command is a client of the REST API.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from sqlmodel import Session

from provisioner.cli.groups import app, token_app
from provisioner.cli.output import OutputFormat, OutputOpt, emit, handle_errors
from provisioner.settings import Settings, get_settings, reset_settings


def _settings_with(**overrides: object) -> Settings:
    """Apply CLI overrides through the environment so every module's get_settings() agrees."""
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"PROV_{key.upper()}"] = str(value)
    reset_settings()
    return get_settings()


@app.command("serve")
@handle_errors
def serve(
    host: str = typer.Option(None, "--host", help="listen address (default 127.0.0.1 or PROV_HOST)"),
    port: int = typer.Option(None, "--port", help="API port (default 8700 or PROV_PORT)"),
    tftp_port: int = typer.Option(None, "--tftp-port", help="TFTP port (default 69 or PROV_TFTP_PORT)"),
) -> None:
    """Run the controller: migrate the database, then serve the API and start the services."""
    import uvicorn

    from provisioner import auth, migrate
    from provisioner.api.app import create_app
    from provisioner.logs import setup_logging

    settings = _settings_with(host=host, port=port, tftp_port=tftp_port)
    settings.ensure_dirs()
    setup_logging(settings.log_level, settings.log_json)
    migrate.upgrade(settings)
    token = auth.ensure_admin_token(settings)
    if token:
        # Printed once; only its sha256 is stored. stderr keeps it out of piped stdout logs.
        sys.stderr.write(
            "\nFirst start: an admin API token was created. It is shown only now:\n\n"
            f"    {token}\n\n"
            f"Use it with: prov login --url {settings.base_url}   (or export PROV_TOKEN=...)\n\n"
        )
        sys.stderr.flush()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=True, server_header=False)


@token_app.command("create")
@handle_errors
def token_create(name: str = typer.Option("admin", "--name", help="who the token is for (shows in history)")) -> None:
    """Create an API token (prints it once on stdout). Runs against the local database."""
    from provisioner import auth, migrate
    from provisioner.db import get_engine

    if not name or len(name) > 64:
        raise typer.BadParameter("1-64 characters", param_hint="--name")
    settings = get_settings()
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session:
        token = auth.create_token(session, name=name)
    sys.stdout.write(token + "\n")


def _token_rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"id": r.id, "name": r.name, "created_at": r.created_at, "last_used_at": r.last_used_at,
             "revoked": r.revoked} for r in rows]


@token_app.command("list")
@handle_errors
def token_list(output: OutputFormat = OutputOpt) -> None:
    """API tokens by id and name (never the tokens: only their hashes are stored)."""
    from provisioner import auth, migrate
    from provisioner.db import get_engine

    settings = get_settings()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session:
        rows = _token_rows(auth.list_tokens(session))
    emit(rows, output, columns=["id", "name", "created_at", "last_used_at", "revoked"])


@token_app.command("revoke")
@handle_errors
def token_revoke(ident: str = typer.Argument(..., help="token id, or a name (revokes every token of that name)"),
                 output: OutputFormat = OutputOpt) -> None:
    """Revoke API tokens; the API refuses them within 10 s (its token cache), no restart needed."""
    from provisioner import auth, migrate
    from provisioner.db import get_engine

    settings = get_settings()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session:
        rows = _token_rows(auth.revoke_tokens(session, ident))
    emit(rows, output, columns=["id", "name", "created_at", "last_used_at", "revoked"])
