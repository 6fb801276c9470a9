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
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
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


log = logging.getLogger(__name__)

# pg_advisory_lock key held by a starting process around migration and the first admin token:
# "prov" in ASCII and 1, so it names prov to whoever reads pg_locks. Every role process of a
# cluster starts with prepare(), possibly at the same moment against one PostgreSQL.
STARTUP_LOCK_KEY = (0x70726F76 << 32) | 1
STARTUP_LOCK_POLL_S = 0.1


@contextlib.contextmanager
def startup_lock(settings: Settings) -> Iterator[None]:
    """Serialise start-ups on PostgreSQL (an advisory lock on a connection of its own); SQLite
    needs none: one process, and its migration runs in one write transaction anyway."""
    if not settings.db_url.startswith("postgresql"):
        yield
        return
    with get_engine(settings).connect() as conn:
        # Waited for by trying, never by a blocking pg_advisory_lock: a waiter blocked in that
        # SELECT holds a transaction open, and the holder's DBOS migration (CREATE INDEX
        # CONCURRENTLY waits for every older transaction to end) would then wait for the waiters
        # while they wait for it: role processes started together hung.
        while not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": STARTUP_LOCK_KEY}).scalar():
            conn.commit()
            time.sleep(STARTUP_LOCK_POLL_S)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_LOCK_KEY})
            conn.commit()


def prepare(settings: Settings) -> str | None:
    """Directories, logging, schema migration; returns the admin token created on the very first start.

    Log lines are written by a thread of their own (logs.setup_logging ``background``): the event
    loop only queues them. Run once per ``prov serve``, before any worker process starts; on
    PostgreSQL under ``startup_lock``, so processes starting together migrate once and make one
    admin token.

    The token exists in plain text only in that return value (only its sha256 is stored).
    """
    settings.ensure_dirs()
    setup_logging(settings.log_level, settings.log_json, background=True)
    from provisioner.conductor import engine  # the workflow engine's own schema (DBOS), once too

    with startup_lock(settings):
        migrate.upgrade(settings)
        engine.migrate_system_database(settings)
        return auth.ensure_admin_token(settings)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return dict(host=settings.host, port=settings.port, log_config=None, access_log=True, server_header=False,
                # Rate limits and history lines key on the peer address: never take it from an
                # X-Forwarded-For header (uvicorn trusts one from 127.0.0.1 by default, and the lab's
                # guests reach the controller through a loopback forwarder).
                proxy_headers=False)


def worker_app() -> Any:
    """The app of one uvicorn worker process (``--workers N``): settings from the PROV_* variables
    the parent set (settings_with), logging of its own; migration and the first token were done
    once by the parent (prepare)."""
    from provisioner.api.app import create_app

    settings = get_settings()
    setup_logging(settings.log_level, settings.log_json, background=True)
    return create_app(settings)


def run(settings: Settings) -> None:
    """Run this process's roles until interrupted: the API (in ``api_workers`` uvicorn worker
    processes when more than one) when it has the api role, else its services alone."""
    if "api" not in settings.role_set:
        run_headless(settings)
        return
    import uvicorn

    if settings.api_workers > 1:
        # Each worker imports the factory and runs the lifespan: every worker is a cluster member.
        uvicorn.run("provisioner.server:worker_app", factory=True, workers=settings.api_workers,
                    **_uvicorn_options(settings))
        return
    from provisioner.api.app import create_app

    uvicorn.run(create_app(settings), **_uvicorn_options(settings))


def run_headless(settings: Settings) -> None:
    """A conductor or boot agent without the api role: its services and heartbeat, no HTTP
    listener, until SIGTERM or SIGINT (a clean stop: the member is marked stopped)."""
    from provisioner.api import lifespan

    done = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        # A second signal while stopping (systemd and compose may repeat theirs) is only logged:
        # the handlers stay, so it cannot cut a clean shutdown short; SIGKILL still ends it.
        log.info("signal %d: %s", signum, "still stopping" if done.is_set() else "stopping")
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    stops = lifespan.start_services(settings)
    try:
        while not done.wait(1.0):
            pass
    finally:
        lifespan.stop_services(stops)


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
