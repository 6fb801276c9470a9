"""``prov serve`` and ``prov token create|list|revoke``: the commands that run on the controller itself.

They work directly on the database in PROV_DATA_DIR (or PROV_DATABASE_URL);
every other command is a client of the REST API. The work itself is in
provisioner/server.py, imported inside each command so that no other command
loads the database layer or the web framework.
"""

from __future__ import annotations

import sys

import typer

from provisioner.cli.groups import app, token_app
from provisioner.cli.output import OutputFormat, OutputOpt, emit, handle_errors


@app.command("serve")
@handle_errors
def serve(
    host: str = typer.Option(None, "--host", help="listen address (default 127.0.0.1 or PROV_HOST)"),
    port: int = typer.Option(None, "--port", help="API port (default 8700 or PROV_PORT)"),
    tftp_port: int = typer.Option(None, "--tftp-port", help="TFTP port (default 69 or PROV_TFTP_PORT)"),
) -> None:
    """Run the controller: migrate the database, then serve the API and start the services."""
    from provisioner import server

    settings = server.settings_with(host=host, port=port, tftp_port=tftp_port)
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


@token_app.command("create")
@handle_errors
def token_create(name: str = typer.Option("admin", "--name", help="who the token is for (shows in history)")) -> None:
    """Create an API token (prints it once on stdout). Runs against the local database."""
    from provisioner import server

    if not name or len(name) > 64:
        raise typer.BadParameter("1-64 characters", param_hint="--name")
    sys.stdout.write(server.create_token(name) + "\n")


@token_app.command("list")
@handle_errors
def token_list(output: OutputFormat = OutputOpt) -> None:
    """API tokens by id and name (never the tokens: only their hashes are stored)."""
    from provisioner import server

    emit(server.list_tokens(), output, columns=server.TOKEN_COLUMNS)


@token_app.command("revoke")
@handle_errors
def token_revoke(ident: str = typer.Argument(..., help="token id, or a name (revokes every token of that name)"),
                 output: OutputFormat = OutputOpt) -> None:
    """Revoke API tokens; the API refuses them within 10 s (its token cache), no restart needed."""
    from provisioner import server

    emit(server.revoke_tokens(ident), output, columns=server.TOKEN_COLUMNS)
