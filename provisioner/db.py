"""Engine and sessions. SQLite by default (WAL, foreign keys, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from provisioner import changes
from provisioner.settings import Settings, get_settings

_engines: dict[str, Engine] = {}

# Boot-relevant commits tell the boot agents (pg_notify on PostgreSQL, in-process on SQLite).
changes.install()

# SQLite waits this long for a competing writer before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
# How long a request waits for a pooled connection before it is told to retry (503 with
# Retry-After, api/app.py). No connection is held across network I/O (issue 18), so every
# holder gives its connection back within milliseconds; a long wait means overload, and a
# prompt "retry" beats the 30 s default followed by a failure.
POOL_TIMEOUT_S = 5.0

# Sizing the pool (issue 18: 160 authenticated readers got 503 database_busy with no SQL running).
# A request's session keeps its connection from the first query until the session dependency's
# teardown, and between the two FastAPI needs a worker thread again (it validates a sync route's
# response in the thread pool) and the event loop sends the response. A worker waiting for a
# connection blocks its thread; once every connection belonged to such parked requests and every
# worker thread was waiting, nobody could give one back until the pool timeout. So:
# * at most REQUEST_SESSIONS requests hold a session at once (api/deps.get_session waits for a
#   permit on the event loop, not on a thread), and
# * the pool holds more than that: the rest serves code that opens and closes its own session
#   within one thread (token lookups, the conductor's task workers, the TFTP hook), which always
#   gives its connection back without needing another thread.
# Parked requests can therefore never take every connection, and a waiting thread only waits for
# holders that are running.
API_THREADS = 40  # anyio's default thread limiter: FastAPI's sync routes and dependencies run there
TASK_THREADS = 32  # the engine's tasks queue: task_concurrency per conductor (conductor/engine.py)
# SQLite connections are cheap (a file handle and a page cache, no server process): enough for
# every request the threads can keep busy, and the pool's bound never decides anything.
SQLITE_REQUEST_SESSIONS = 2 * API_THREADS
SQLITE_POOL_SIZE = SQLITE_REQUEST_SESSIONS
# in-thread users: every worker thread (an API thread may hold its request's connection and open
# one more inside the conductor), the task workers, and a margin for the daemons (timeout
# checker, DHCP sync, TFTP hook workers)
SQLITE_MAX_OVERFLOW = 2 * API_THREADS + TASK_THREADS + 16
# PostgreSQL: a sane pool per process (the server's max_connections is shared by every controller
# process); half of it for request sessions, so in-thread users always find the other half.
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 20
PG_REQUEST_SESSIONS = (PG_POOL_SIZE + PG_MAX_OVERFLOW) // 2


def request_sessions(url: str) -> int:
    """How many API requests may hold a database session at once (see the pool sizing above)."""
    return SQLITE_REQUEST_SESSIONS if url.startswith("sqlite") else PG_REQUEST_SESSIONS


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
                               pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_MAX_OVERFLOW,
                               pool_timeout=POOL_TIMEOUT_S)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW,
                               pool_timeout=POOL_TIMEOUT_S)
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
