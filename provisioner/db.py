"""Engine and sessions. SQLite by default (WAL, foreign keys, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from provisioner.settings import Settings, get_settings

_engines: dict[str, Engine] = {}

# SQLite waits this long for a competing writer before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
# How long a request waits for a pooled connection before it is told to retry (503 with
# Retry-After, api/app.py). No connection is held across network I/O (issue 18), so every
# holder gives its connection back within milliseconds; a long wait means overload, and a
# prompt "retry" beats the 30 s default followed by a failure.
POOL_TIMEOUT_S = 5.0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoint
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_timeout=POOL_TIMEOUT_S)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=POOL_TIMEOUT_S)
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    s = settings or get_settings()
    url = s.db_url
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            s.data_dir.mkdir(parents=True, exist_ok=True)
        engine = _engines[url] = make_engine(url)
    return engine


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session for background work (conductor, drivers); the API uses deps.get_session."""
    with Session(get_engine(settings), expire_on_commit=False) as session:
        yield session
