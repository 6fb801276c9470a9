"""``prov login``: remember the controller's URL and an API token for this user.

The file (``provisioner.client.config_path()``, ``~/.config/prov/client.yaml``
unless ``PROV_CLIENT_CONFIG`` says otherwise) holds a bearer token, so it is
created 0600 in a 0700 directory and replaced atomically: a reader never sees
a half-written file and the token is never readable by others, even briefly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import yaml

from provisioner.cli.groups import app
from provisioner.cli.host import register_secret
from provisioner.cli.output import fail, handle_errors
from provisioner.client import ProvClient, config_path


def write_client_config(path: Path, url: str, token: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".client-", suffix=".yaml", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump({"url": url, "token": token}, fh, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_token(token_stdin: bool) -> str:
    if token_stdin:
        return sys.stdin.readline().strip()
    if sys.stdin.isatty():
        return str(typer.prompt("API token", hide_input=True)).strip()
    raise fail("no token given: use --token, --token-stdin or PROV_TOKEN", 2)


@app.command("login")
@handle_errors
def login(
    url: Annotated[str, typer.Option("--url", help="controller URL, e.g. http://127.0.0.1:8700")] = "",
    token: Annotated[
        str,
        typer.Option(
            "--token",
            help="API token (prefer --token-stdin or the hidden prompt: arguments show in the process list)",
        ),
    ] = "",
    token_stdin: Annotated[bool, typer.Option("--token-stdin", help="read the token from standard input")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="check the token against the controller")] = True,
) -> None:
    """Save the controller URL and an API token for later commands."""
    url = (url or os.environ.get("PROV_URL") or "http://127.0.0.1:8700").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise fail(f"--url: must start with http:// or https:// (got {url!r})", 2)
    secret = token or os.environ.get("PROV_TOKEN") or _read_token(token_stdin)
    if not secret:
        raise fail("empty token", 2)
    register_secret(secret)
    if verify:
        with ProvClient(url=url, token=secret) as c:
            # Any authenticated read proves URL and token together.
            c.get("/api/v1/racks", params={"limit": 1})
    path = config_path()
    write_client_config(path, url, secret)
    sys.stdout.write(f"logged in to {url}; settings saved in {path}\n")
