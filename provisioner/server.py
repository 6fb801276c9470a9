"""The controller's own work, for the commands that run on its machine (cli/serve.py).

``prov serve`` migrates the database, creates the first admin token on the
very first start, builds the API app and runs it under uvicorn; ``prov token
create|list|revoke`` can work directly on the database in PROV_DATA_DIR (or
PROV_DATABASE_URL) when the CLI is not logged in to a controller (or with
``--local``). Every other command is a client of the REST API. The CLI
imports this module only inside those commands, so the rest of the CLI never
loads the database layer or the web framework.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session

from provisioner import audit, auth, migrate
from provisioner.db import get_engine
from provisioner.logs import setup_logging
from provisioner.models import ApiToken
from provisioner.settings import Settings, get_settings, reset_settings


def settings_with(**overrides: object) -> Settings:
    """Apply command-line overrides through the environment, so every module's get_settings() agrees."""
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"PROV_{key.upper()}"] = str(value)
    reset_settings()
    return get_settings()


def prepare(settings: Settings) -> str | None:
    """Directories, logging, schema migration; returns the admin token created on the very first start.

    Log lines are written by a thread of their own (logs.setup_logging ``background``): the event
    loop only queues them.

    The token exists in plain text only in that return value (only its sha256 is stored).
    """
    settings.ensure_dirs()
    setup_logging(settings.log_level, settings.log_json, background=True)
    migrate.upgrade(settings)
    return auth.ensure_admin_token(settings)


def run(settings: Settings) -> None:
    """Serve the API (and start its services) until interrupted."""
    import uvicorn

    from provisioner.api.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=True, server_header=False,
                # Rate limits and history lines key on the peer address: never take it from an
                # X-Forwarded-For header (uvicorn trusts one from 127.0.0.1 by default, and the lab's
                # guests reach the controller through a loopback forwarder).
                proxy_headers=False)


def _token_rows(rows: list[ApiToken]) -> list[dict[str, Any]]:
    return [{"id": r.id, "name": r.name, "scopes": list(auth.token_scopes(r)), "created_at": r.created_at,
             "expires_at": r.expires_at, "last_used_at": r.last_used_at, "revoked": r.revoked} for r in rows]


@contextlib.contextmanager
def _audited(what: str) -> Iterator[None]:
    """Token changes made here, off the API, are audited too: the actor is the local user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        user = str(os.getuid())
    token = audit.begin(audit.RequestAudit(method="CLI", path=what, actor=f"local:{user}"[:128], route=what))
    try:
        yield
    finally:
        audit.end(token)


def create_token(name: str, settings: Settings | None = None, *, scopes: Sequence[str] = ("operator",),
                 expires_at: datetime | None = None) -> dict[str, Any]:
    """A new API token: its row, with the token itself under ``token`` (the only time it exists)."""
    settings = settings or get_settings()
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session, _audited("prov token create"):
        row, plain = auth.issue_token(session, name=name, scopes=scopes, expires_at=expires_at)
        return {**_token_rows([row])[0], "token": plain}


def list_tokens(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every API token by id and name (never the token: only its hash is stored)."""
    settings = settings or get_settings()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session:
        return _token_rows(auth.list_tokens(session))


def revoke_tokens(ident: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Revoke the token with this id, or every token of this name; returns the rows revoked."""
    settings = settings or get_settings()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session, _audited("prov token revoke"):
        return _token_rows(auth.revoke_tokens(session, ident))
