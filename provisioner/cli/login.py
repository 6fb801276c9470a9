"""``prov login`` and ``prov context list|use|rm``: saved URLs and API tokens, one profile per controller.

The file (``provisioner.client.config_path()``, ``~/.config/prov/client.yaml``
unless ``PROV_CLIENT_CONFIG`` says otherwise) holds bearer tokens, so it is
created 0600 in a 0700 directory and replaced atomically: a reader never sees
a half-written file and a token is never readable by others, even briefly.
``prov login --profile lab`` saves under ``lab`` and makes it the current
profile; ``PROV_PROFILE=prod prov host list`` uses another one for one command.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import app, context_app
from provisioner.cli.host import check, register_secret
from provisioner.cli.output import NoHeadersOpt, OutputFormat, OutputOpt, emit, fail, handle_errors
from provisioner.client import DEFAULT_URL, ClientConfig, ProvClient, config_path, profile_name, read_client_config
from provisioner.errors import NotFound

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", metavar="NAME",
                 help="login profile to save (default: $PROV_PROFILE, else the current one, else 'default')"),
]


def write_client_config(path: Path, cfg: ClientConfig) -> None:
    import yaml

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".client-", suffix=".yaml", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
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
    raise fail("no token given: use --token, --token-stdin or PROV_TOKEN", exitcodes.USAGE)


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
    profile: ProfileOpt = None,
) -> None:
    """Save the controller URL and an API token (as a login profile) for later commands."""
    path = config_path()
    cfg = read_client_config(path)
    name = check("--profile", "validate_slug", profile_name(cfg, profile))
    saved = cfg.profiles.get(name, {})
    url = (url or os.environ.get("PROV_URL") or saved.get("url") or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise fail(f"--url: must start with http:// or https:// (got {url!r})", exitcodes.USAGE)
    secret = token or os.environ.get("PROV_TOKEN") or _read_token(token_stdin)
    if not secret:
        raise fail("empty token", exitcodes.USAGE)
    register_secret(secret)
    if verify:
        with ProvClient(url=url, token=secret) as c:
            # Any authenticated read proves URL and token together.
            c.get("/api/v1/racks", params={"limit": 1})
    cfg.profiles[name] = {"url": url, "token": secret}
    cfg.current = name
    write_client_config(path, cfg)
    sys.stdout.write(f"logged in to {url} as profile {name}; settings saved in {path}\n")


@context_app.command("list")
@handle_errors
def context_list(output: OutputFormat = OutputOpt, no_headers: NoHeadersOpt = False) -> None:
    """The saved login profiles, their URLs and which one is in use (never the tokens)."""
    cfg = read_client_config()
    using = profile_name(cfg)
    rows = [{"name": n, "url": p.get("url"), "current": n == using, "token_set": bool(p.get("token"))}
            for n, p in sorted(cfg.profiles.items())]
    emit(rows, output, columns=["name", "url", "current", "token_set"], headers=not no_headers)


def _known(cfg: ClientConfig, name: str) -> None:
    if name not in cfg.profiles:
        raise NotFound(kind="login profile", name=name)


@context_app.command("use")
@handle_errors
def context_use(name: Annotated[str, typer.Argument(help="a saved login profile")]) -> None:
    """Make a saved login profile the current one."""
    path = config_path()
    cfg = read_client_config(path)
    _known(cfg, name)
    cfg.current = name
    write_client_config(path, cfg)
    sys.stdout.write(f"using profile {name} ({cfg.profiles[name].get('url', DEFAULT_URL)})\n")


@context_app.command("rm")
@handle_errors
def context_rm(name: Annotated[str, typer.Argument(help="a saved login profile")]) -> None:
    """Forget a saved login profile and its token (nothing changes on the controller)."""
    path = config_path()
    cfg = read_client_config(path)
    _known(cfg, name)
    del cfg.profiles[name]
    if cfg.current == name:
        cfg.current = next(iter(sorted(cfg.profiles)), None)
    write_client_config(path, cfg)
    sys.stdout.write(f"profile {name} removed\n")
