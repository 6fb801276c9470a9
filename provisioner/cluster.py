"""Cluster membership: which ``prov serve`` processes run, with which roles (issue 14).

Every process registers one ``cluster_member`` row when it starts (``register``), with the
roles it runs (api, conductor, boot), the networks a boot agent serves, its host and pid.
A heartbeat thread (``Heartbeat``) stamps the row every ``cluster_heartbeat_interval``;
a clean stop marks it ``stopped``. A member silent for ``cluster_takeover_grace`` is stale:
a conductor claims it dead with ``claim_dead`` and takes its workflows over. The member id
(``host:pid:random``) is also the workflow engine's executor id, so "this member's work" is
one lookup.

Clocks. Members run on several machines, so timestamps come from the database's clock on
PostgreSQL (``SELECT now()``, one clock for everyone); SQLite is one machine and one clock
(the process's). Heartbeats and cut-offs are written as bound values from that clock.

Fencing. A heartbeat updates only a row still ``up``: a member that finds its row claimed
(it was frozen or cut off longer than the grace, and a conductor took its work over) learns
it at its next beat, and ``on_fenced`` runs. For a member with the conductor role the default
stops the process (SIGTERM: a clean shutdown; systemd or compose restart it as a new member),
because its workflows now run elsewhere and must not run twice. A member without that role
owns no work and simply comes back ``up``.

No connection is held between statements of different beats: each beat opens a session on a
private one-connection engine, so the heartbeat neither waits behind the API's or the
conductor's pool nor keeps a connection while it sleeps. A database error skips that beat.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, cast, delete, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from provisioner import __version__
from provisioner.db import make_engine
from provisioner.models import ClusterMember, utcnow
from provisioner.settings import ALL_ROLES, Settings

log = logging.getLogger(__name__)

UP, STOPPED, DEAD = "up", "stopped", "dead"
# Rows of members gone (stopped, dead, or never claimed and without work) are deleted after a
# day: long enough to read what happened in the morning, short enough that restarts (a new
# member each time) do not pile up. Checked at most once an hour, by any member.
PRUNE_AFTER = timedelta(days=1)
PRUNE_EVERY_S = 3600.0
# How long ago a stopped or dead member still shows in GET /api/v1/cluster.
RECENT = timedelta(hours=1)

_T = ClusterMember.__table__  # type: ignore[attr-defined]


def new_member_id() -> str:
    """``host:pid:random``: unique across restarts (a pid is reused) and readable in a log line."""
    host = socket.gethostname()[:96] or "localhost"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def db_now(session: Session) -> datetime:
    """The cluster's clock: PostgreSQL's (members on several machines agree), else this process's."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        value = session.execute(select(func.now())).scalar_one()
        return value  # type: ignore[no-any-return]
    return utcnow()


def _has_role(role: str):  # type: ignore[no-untyped-def]
    # roles is a JSON list of fixed words (ALL_ROLES); its text holds '"conductor"' exactly when the
    # list does, on SQLite (JSON is text) and PostgreSQL (json keeps its text) alike.
    return cast(_T.c.roles, String).like(f'%"{role}"%')


# --------------------------------------------------------------------------- writes
def register(settings: Settings, roles: Iterable[str], networks: Sequence[str] = (), *,
             api_url: str | None = None, member_id: str | None = None,
             engine: Engine | None = None) -> str:
    """Insert this process's row (state up) and return its member id."""
    member = member_id or new_member_id()
    wanted = [r for r in ALL_ROLES if r in set(roles)]
    with Session(engine or _engine(settings)) as session:
        now = db_now(session)
        session.add(ClusterMember(id=member, roles=wanted, hostname=socket.gethostname()[:255], pid=os.getpid(),
                                  version=str(__version__)[:64], networks=list(networks), api_url=api_url,
                                  started_at=now, heartbeat_at=now, state=UP))
        session.commit()
    log.info("cluster member %s registered (roles: %s%s)", member, ", ".join(wanted),
             f"; networks: {', '.join(networks)}" if networks else "")
    return member


def beat(session: Session, member_id: str) -> bool:
    """Stamp the heartbeat of a member still up; False: its row is claimed, stopped or gone (fenced)."""
    now = db_now(session)
    result = session.execute(update(_T).where(_T.c.id == member_id, _T.c.state == UP).values(heartbeat_at=now))
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def revive(session: Session, member_id: str) -> None:
    """A member without work found its row claimed: it is up again (its row, its id)."""
    now = db_now(session)
    session.execute(update(_T).where(_T.c.id == member_id).values(state=UP, taken_over_by=None, heartbeat_at=now))
    session.commit()


def mark_stopped(session: Session, member_id: str) -> None:
    """A clean stop: the member's work is done or handed back, nobody needs to take it over."""
    now = db_now(session)
    session.execute(update(_T).where(_T.c.id == member_id, _T.c.state == UP).values(state=STOPPED, heartbeat_at=now))
    session.commit()


def claim_dead(session: Session, *, role: str, grace_s: float, by: str) -> list[str]:
    """Claim every member with ``role`` whose heartbeat is older than ``grace_s``: mark it dead,
    taken over by ``by``, and return the ids; committed before it returns.

    One compare-and-set UPDATE ... WHERE state = 'up' AND heartbeat_at < cutoff RETURNING id:
    of two conductors claiming at once, the second's UPDATE finds the row no longer up (on
    PostgreSQL it waits for the first's row lock and re-checks the WHERE; SQLite runs one
    writer at a time), so a member is claimed once. ``by`` never claims itself.

    A claimer that dies before its takeover is done leaves work behind: when it is claimed in
    turn, the members it had claimed are handed to the new claimer as well (their ids are in the
    answer too), so the takeover of an executor's work never stops at a dead claimer. Taking an
    id over twice must therefore be harmless (the engine's recovery of an executor is).
    """
    cutoff = db_now(session) - timedelta(seconds=grace_s)
    claimed = session.execute(
        update(_T)
        .where(_T.c.state == UP, _T.c.heartbeat_at < cutoff, _T.c.id != by, _has_role(role))
        .values(state=DEAD, taken_over_by=by)
        .returning(_T.c.id)
    ).scalars().all()
    inherited: list[str] = []
    if claimed:
        inherited = list(session.execute(
            update(_T)
            .where(_T.c.state == DEAD, _T.c.taken_over_by.in_(claimed), _T.c.id != by)
            .values(taken_over_by=by)
            .returning(_T.c.id)
        ).scalars().all())
    session.commit()
    ids = sorted(claimed) + sorted(set(inherited) - set(claimed))
    if ids:
        log.warning("cluster: %s claimed dead member(s) %s (silent for more than %g s)", by, ", ".join(ids), grace_s)
    return ids


def prune(session: Session) -> int:
    """Delete the rows of members long gone: stopped or dead, or up but silent and without the
    conductor role (nobody takes such a member over, and it owns no work). Returns the count."""
    cutoff = db_now(session) - PRUNE_AFTER
    result = session.execute(delete(_T).where(_T.c.heartbeat_at < cutoff, or_(
        _T.c.state.in_((STOPPED, DEAD)), ~_has_role("conductor"))))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- reads
@dataclass(frozen=True)
class MemberView:
    """A member as /readyz and GET /api/v1/cluster show it (status: live | stale | stopped | dead)."""

    row: ClusterMember
    status: str
    heartbeat_age_s: float


def members(session: Session, *, grace_s: float, live_only: bool = False) -> tuple[datetime, list[MemberView]]:
    """The database's now and the members: up ones (live or stale), and with ``live_only``
    False also those stopped or claimed dead within the last hour. Oldest first."""
    now = db_now(session)
    q = select(ClusterMember)
    if live_only:
        q = q.where(ClusterMember.state == UP, ClusterMember.heartbeat_at >= now - timedelta(seconds=grace_s))  # type: ignore[arg-type]
    else:
        q = q.where(or_(ClusterMember.state == UP, ClusterMember.heartbeat_at >= now - RECENT))  # type: ignore[arg-type]
    rows = session.execute(q.order_by(ClusterMember.started_at, ClusterMember.id)).scalars().all()  # type: ignore[arg-type]
    out = []
    for row in rows:
        age = max(0.0, (now - row.heartbeat_at).total_seconds())
        status = row.state if row.state != UP else ("live" if age <= grace_s else "stale")
        out.append(MemberView(row=row, status=status, heartbeat_age_s=round(age, 3)))
    return now, out


def live_members(session: Session, *, grace_s: float = 15.0) -> list[ClusterMember]:
    """Members up whose heartbeat is younger than ``grace_s``."""
    return [m.row for m in members(session, grace_s=grace_s, live_only=True)[1]]


# --------------------------------------------------------------------------- the process's membership
def _engine(settings: Settings) -> Engine:
    # Private to the heartbeat: it never waits behind the API's or the conductor's pool (a starved
    # pool would otherwise read as a dead member). One connection is all it ever uses.
    return make_engine(settings.db_url)


OnFenced = Callable[[str], None]


def stop_this_process(member_id: str) -> None:
    """Default fencing of a conductor: a clean shutdown (SIGTERM to itself)."""
    log.error("cluster member %s was claimed dead by another conductor, which took its work over; "
              "stopping this process so that no workflow runs twice", member_id)
    os.kill(os.getpid(), signal.SIGTERM)


class Membership:
    """This process as a cluster member: registered on ``start()``, a beat every interval on a
    daemon thread, ``stop()`` marks it stopped. A failed registration is retried at each beat."""

    def __init__(self, settings: Settings, roles: Iterable[str], networks: Sequence[str] = (), *,
                 api_url: str | None = None, interval: float | None = None,
                 on_fenced: OnFenced | None = None) -> None:
        self.settings = settings
        self.roles = [r for r in ALL_ROLES if r in set(roles)]
        self.networks = list(networks)
        self.api_url = api_url
        self.interval = interval if interval is not None else settings.cluster_heartbeat_interval
        self.member_id = new_member_id()
        self.registered = False
        self.fenced = threading.Event()
        self.beats = 0
        self.skipped = 0
        self._on_fenced = on_fenced
        self._engine: Engine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = -PRUNE_EVERY_S  # the first beat prunes

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = _engine(self.settings)
        return self._engine

    def start(self) -> Membership:
        self._register()
        self._thread = threading.Thread(target=self._loop, name="prov-cluster-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _register(self) -> bool:
        try:
            register(self.settings, self.roles, self.networks, api_url=self.api_url, member_id=self.member_id,
                     engine=self.engine)
        except SQLAlchemyError as exc:
            log.warning("cluster: registering %s failed (%s); retrying at the next heartbeat",
                        self.member_id, exc.__class__.__name__)
            return False
        self.registered = True
        return True

    def beat_once(self) -> bool:
        """One heartbeat; False when it was skipped (database error) or the member was fenced."""
        if not self.registered:
            return self._register()
        try:
            with Session(self.engine) as session:
                alive = beat(session, self.member_id)
                if alive:
                    self._maybe_prune(session)
        except SQLAlchemyError as exc:
            # A restart or a network cut: skip this beat; the grace spans several of them.
            self.skipped += 1
            log.warning("cluster: heartbeat of %s skipped: %s", self.member_id, exc.__class__.__name__)
            return False
        self.beats += 1
        if not alive:
            self._fenced()
        return alive

    def _maybe_prune(self, session: Session) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = time.monotonic()
        if n := prune(session):
            log.info("cluster: pruned %d member row(s) older than %s", n, PRUNE_AFTER)

    def _fenced(self) -> None:
        if self._on_fenced is not None:
            self.fenced.set()
            self._on_fenced(self.member_id)
        elif "conductor" in self.roles:
            self.fenced.set()
            self._stop.set()
            stop_this_process(self.member_id)
        else:
            log.warning("cluster member %s was marked gone while it owned no work; it is up again", self.member_id)
            try:
                with Session(self.engine) as session:
                    revive(session, self.member_id)
            except SQLAlchemyError as exc:
                log.warning("cluster: reviving %s failed: %s", self.member_id, exc.__class__.__name__)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat_once()
            except Exception:  # never let the heartbeat thread die: the member would read as dead
                log.exception("cluster: heartbeat of %s failed", self.member_id)

    def stop(self) -> None:
        """Stop beating and mark the member stopped (skipped when the database cannot be reached:
        the member then reads as stale and is claimed like a crashed one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.interval * 2))
        if self.registered and not self.fenced.is_set():
            try:
                with Session(self.engine) as session:
                    mark_stopped(session, self.member_id)
            except SQLAlchemyError as exc:
                log.warning("cluster: marking %s stopped failed: %s", self.member_id, exc.__class__.__name__)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


_current: Membership | None = None


def current() -> Membership | None:
    """The membership this process started (lifespan), if any: its ``member_id`` is the executor id."""
    return _current


def join(settings: Settings, roles: Iterable[str], networks: Sequence[str] = (), *,
         api_url: str | None = None, on_fenced: OnFenced | None = None) -> Membership:
    """Register this process and start its heartbeat (api/lifespan.py); ``stop()`` it at shutdown."""
    global _current
    membership = Membership(settings, roles, networks, api_url=api_url, on_fenced=on_fenced).start()
    _current = membership
    return membership


def leave(membership: Membership) -> None:
    global _current
    membership.stop()
    if _current is membership:
        _current = None
