"""Boot-relevant changes, told to the boot agents (issue 14: a change reaches them in < 1 s).

A session hook (registered on every session by db.py) notes when a flush touched a row the
boot agents serve from: hosts (netboot flag, install token), NICs (MAC, reservation, boot
flag) and racks (a rack's network moves its hosts to another agent).

* PostgreSQL: ``pg_notify('prov_boot', tables)`` runs inside the flushing transaction, so
  listeners hear it exactly when it commits (never for a rollback; PostgreSQL folds the
  identical notifies of one transaction into one). :class:`Listener` is the boot agent's
  end: a thread with its own connection (never one of the pool's: a LISTEN must stay on one
  session), reconnecting with backoff after the database went away; on every reconnect it
  calls back once, since what changed during the outage was not heard.
* SQLite (the embedded single process): nothing is sent; after the commit the in-process
  subscribers (:func:`subscribe`) are called, and the boot service's sync loop still polls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from provisioner.models import Host, Nic, Rack

log = logging.getLogger(__name__)

CHANNEL = "prov_boot"
BOOT_TABLES: tuple[type, ...] = (Host, Nic, Rack)
_FLAG = "prov_boot_changed"
# Reconnect backoff of the listener: quick first (a restart takes seconds), capped so a long
# outage costs one connection attempt every few seconds, not a storm.
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
# How long one wait for a notification lasts: bounds how late stop() is noticed.
WAIT_S = 0.5

Callback = Callable[[str], None]
_subscribers: list[Callback] = []
_sub_lock = threading.Lock()


def subscribe(callback: Callback) -> Callable[[], None]:
    """Call ``callback(tables)`` after each commit in this process that changed boot rows."""
    with _sub_lock:
        _subscribers.append(callback)

    def unsubscribe() -> None:
        with _sub_lock:
            if callback in _subscribers:
                _subscribers.remove(callback)

    return unsubscribe


def _tell_local(tables: str) -> None:
    with _sub_lock:
        callbacks = list(_subscribers)
    for cb in callbacks:
        try:
            cb(tables)
        except Exception:
            log.exception("a boot change subscriber failed")


def _changed_tables(session: Session) -> set[str]:
    tables: set[str] = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, BOOT_TABLES):
            tables.add(type(obj).__tablename__)  # type: ignore[attr-defined]
    return tables


def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    tables = _changed_tables(session)
    if tables:
        pending: set[str] = session.info.setdefault(_FLAG, set())
        pending.update(tables)
        session.info["prov_boot_flush"] = tables


def _after_flush(session: Session, _ctx: Any) -> None:
    tables = session.info.pop("prov_boot_flush", None)
    if not tables:
        return
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        # inside the transaction: delivered at its commit, dropped with its rollback
        session.connection().execute(text("SELECT pg_notify(:c, :p)"),
                                     {"c": CHANNEL, "p": ",".join(sorted(tables))})


def _after_commit(session: Session) -> None:
    tables = session.info.pop(_FLAG, None)
    if tables:
        _tell_local(",".join(sorted(tables)))


def _after_rollback(session: Session) -> None:
    session.info.pop(_FLAG, None)
    session.info.pop("prov_boot_flush", None)


_installed = False


def install() -> None:
    """Register the hooks on every SQLAlchemy session (db.py calls this once)."""
    global _installed
    if _installed:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", lambda s, _t: _after_rollback(s))
    _installed = True


def conninfo(db_url: str) -> str:
    """libpq's URL for SQLAlchemy's (``postgresql+psycopg://`` -> ``postgresql://``)."""
    url = make_url(db_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Listener:
    """LISTEN prov_boot on a dedicated connection; ``callback(tables)`` for each notification
    and once after every (re)connect. ``start()``/``stop()``; ``connects`` counts connections."""

    def __init__(self, db_url: str, callback: Callback, channel: str = CHANNEL) -> None:
        self._conninfo = conninfo(db_url)
        self._callback = callback
        self._channel = channel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self.connects = 0
        self.listening = threading.Event()

    def start(self) -> Listener:
        self._thread = threading.Thread(target=self._run, name="boot-listen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _call(self, tables: str) -> None:
        try:
            self._callback(tables)
        except Exception:
            log.exception("boot change callback failed")

    def _run(self) -> None:
        import psycopg

        delay = BACKOFF_FIRST_S
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self._channel}")  # a fixed identifier, never input
                    self.connects += 1
                    self.listening.set()
                    if self.connects > 1:
                        log.info("boot listener: reconnected to the database")
                    delay = BACKOFF_FIRST_S
                    self._call("*")  # what changed while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=WAIT_S):
                            self._call(note.payload)
            except Exception as exc:  # the database went away (restart, network): retry
                self.listening.clear()
                if self._stop.is_set():
                    return
                log.warning("boot listener: database connection lost (%s); retrying in %.1f s",
                            type(exc).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self.listening.clear()
