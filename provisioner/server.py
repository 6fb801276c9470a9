"""The controller's own work, for the commands that run on its machine (cli/serve.py).

``prov serve`` migrates the database, creates the first admin token on the
very first start, builds the API app and runs it under uvicorn; ``prov token
create|list|revoke`` work directly on the database in PROV_DATA_DIR (or
PROV_DATABASE_URL). Every other command is a client of the REST API. The CLI
imports this module only inside those commands, so the rest of the CLI never
loads the database layer or the web framework.
"""

from __future__ import annotations

import os
from typing import Any

from sqlmodel import Session

from provisioner import auth, migrate
from provisioner.db import get_engine
from provisioner.logs import setup_logging
from provisioner.models import ApiToken
from provisioner.settings import Settings, get_settings, reset_settings

TOKEN_COLUMNS = ["id", "name", "created_at", "last_used_at", "revoked"]


def settings_with(**overrides: object) -> Settings:
    """Apply command-line overrides through the environment, so every module's get_settings() agrees."""
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"PROV_{key.upper()}"] = str(value)
    reset_settings()
    return get_settings()


def prepare(settings: Settings) -> str | None:
    """Directories, logging, schema migration; returns the admin token created on the very first start.

    The token exists in plain text only in that return value (only its sha256 is stored).
    """
    settings.ensure_dirs()
    setup_logging(settings.log_level, settings.log_json)
    migrate.upgrade(settings)
    return auth.ensure_admin_token(settings)


def run(settings: Settings) -> None:
    """Serve the API (and start its services) until interrupted."""
    import uvicorn

    from provisioner.api.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=True, server_header=False)


def _token_rows(rows: list[ApiToken]) -> list[dict[str, Any]]:
    return [{"id": r.id, "name": r.name, "created_at": r.created_at, "last_used_at": r.last_used_at,
             "revoked": r.revoked} for r in rows]


def create_token(name: str, settings: Settings | None = None) -> str:
    """A new API token (returned once, in plain text)."""
    settings = settings or get_settings()
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session:
        return auth.create_token(session, name=name)


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
    with Session(get_engine(settings)) as session:
        return _token_rows(auth.revoke_tokens(session, ident))
