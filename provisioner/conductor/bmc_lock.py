"""One call per BMC across every conductor (issue 14: per-BMC caps hold across conductors).

The power service's per-BMC ``threading.Lock`` serialises one process's calls to a BMC; two
conductors (an install's power step on one, the power sync round on the other) could still talk
to one BMC at once. On PostgreSQL each call also holds a transaction-level advisory lock keyed by
the BMC endpoint (``pg_advisory_xact_lock(class, crc32(kind|address|port))``) for its duration,
on a small engine of its own, waiting at most ``wait_s`` (``lock_timeout``: then BmcBusy, as the
in-process lock's waiter). A conductor that dies mid-call drops its connection, which releases
the lock: nothing to expire. On SQLite there is one process by construction (partial roles are
refused), so the in-process lock is the whole rule and this is a no-op.

Why not DBOS queues: a partitioned queue per BMC refuses deduplication (the install queue's
one-workflow-per-host), and a BMC call is a part of a step, not a workflow. Why not a lease
table: a row per call is two writes and a poll to wait; the advisory lock is one round trip and
the server wakes the waiter. Cost: one pooled connection per call in flight (at most
``power_concurrency`` per conductor: the call holds the global cap first).
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from provisioner.settings import Settings

LOCK_CLASS = 0x70726F76  # "prov" (an int4)
_engines: dict[str, Any] = {}
_guard = threading.Lock()


class Busy(Exception):
    """Another conductor's call to this BMC outlasted the wait, or the database did not answer."""


def _engine(settings: Settings) -> Any:
    url = settings.db_url
    with _guard:
        eng = _engines.get(url)
        if eng is None:
            eng = _engines[url] = sa.create_engine(url, pool_size=2, max_overflow=max(2, settings.power_concurrency),
                                                   pool_pre_ping=True)
        return eng


def key(kind: str, address: str, port: int | None) -> int:
    """The endpoint's lock key, an int4 (stable across processes)."""
    k = zlib.crc32(f"{kind}|{address}|{port}".encode())
    return k - (1 << 32) if k >= (1 << 31) else k


@contextlib.contextmanager
def held(settings: Settings, kind: str, address: str, port: int | None, wait_s: float) -> Iterator[None]:
    """While the body runs, no other conductor calls this BMC (PostgreSQL; SQLite: nothing)."""
    if not settings.db_url.startswith("postgresql"):
        yield
        return
    try:
        conn = _engine(settings).connect()
    except sa.exc.OperationalError as exc:  # the database restarting: retried as a busy BMC
        raise Busy("the database did not answer") from exc
    try:
        try:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{max(1, int(wait_s * 1000))}ms'"))
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, :k)"),
                         {"c": LOCK_CLASS, "k": key(kind, address, port)})
        except sa.exc.OperationalError as exc:
            conn.rollback()
            raise Busy("another conductor's call to this BMC is still running"
                       if "lock timeout" in str(exc).lower() else "the database did not answer") from exc
        try:
            yield
        finally:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.rollback()  # ends the transaction: the lock is released
    finally:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            conn.close()


def dispose() -> None:
    with _guard:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
