"""The event stream (issue 16, item 1): every change as one numbered event, read from the database.

Writers never call this module: provisioner/event_outbox.py appends a row to ``event_stream``
in the transaction of the change (host state/power, history line, task progress, inventory,
drift), so the row's id is the event's id and a committed change always has its event.

Readers are ``GET /api/v1/events/stream`` (api/routes/events_stream.py) and the web console
(cookie auth, the same generators): ``stream()`` yields ``StreamEvent`` s after ``last_id``,
``sse_body()`` turns them into the bytes of a ``text/event-stream`` response with heartbeats.
A reader never holds a pooled connection while it waits: it reads one batch on a worker thread,
gives the connection back, and sleeps until the database says something new was committed
(PostgreSQL LISTEN/NOTIFY on channel ``prov_events``; a cheap ``max(id)`` poll on SQLite).

Resume: a client that sends ``Last-Event-ID: N`` gets every event with id > N, in id order.
Events older than the retention (settings ``events_retention_hours``/``events_retention_rows``)
are pruned; a client whose N is older than that gets, first, one ``stream.lost`` event
saying which ids are gone (never silence), then the retained ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session
from sqlmodel import select as select_rows

from provisioner import event_outbox
from provisioner.db import get_engine
from provisioner.models import EventStreamMark, EventStreamRow
from provisioner.settings import Settings

log = logging.getLogger(__name__)

# The kinds of events (issue 16's list); the filter ``kind`` takes one of these or its prefix
# before the dot (``host`` = host.state, host.history, host.power).
KINDS = ("host.state", "host.history", "host.power", "task.progress", "inventory", "drift")
# Not stored: the first event of a stream whose Last-Event-ID is older than the retention.
LOST = "stream.lost"

# Rows read per query: a reader far behind catches up in batches and yields between them.
BATCH = 500
# SSE comment line sent when nothing happened for this long, so proxies (nginx's default
# proxy_read_timeout is 60 s) and load balancers keep the connection open (issue 16: ~15 s).
HEARTBEAT_S = 15.0
# SQLite has no NOTIFY: one poll of max(id) per process and database this often wakes every
# stream of that process (a single indexed lookup). Writes of this process wake at once.
SQLITE_POLL_S = 0.2
# PostgreSQL: the LISTEN wakes streams; this poll is only a backstop for a lost listener.
PG_POLL_S = 5.0
CHANNEL = "prov_events"


@dataclass(frozen=True)
class StreamFilter:
    """What a stream shows: every given field must match (an empty set matches everything)."""

    hosts: frozenset[str] = field(default_factory=frozenset)
    racks: frozenset[str] = field(default_factory=frozenset)
    kinds: frozenset[str] = field(default_factory=frozenset)  # KINDS or their prefix ("host")

    @classmethod
    def of(cls, hosts: Iterable[str] = (), racks: Iterable[str] = (), kinds: Iterable[str] = ()) -> StreamFilter:
        """From query values; each may be comma-separated (``kind=host.state,drift``)."""
        def split(values: Iterable[str]) -> frozenset[str]:
            return frozenset(p.strip() for v in values for p in v.split(",") if p.strip())
        return cls(split(hosts), split(racks), split(kinds))

    def bad_kind(self) -> str | None:
        """The first kind that is no KIND nor a prefix of one, else None."""
        prefixes = {k.split(".")[0] for k in KINDS}
        return next((k for k in sorted(self.kinds) if k not in KINDS and k not in prefixes), None)

    def matches(self, ev: StreamEvent) -> bool:
        if ev.kind == LOST:
            return True  # always told
        if self.hosts and ev.host not in self.hosts:
            return False
        if self.racks and ev.rack not in self.racks:
            return False
        return not self.kinds or ev.kind in self.kinds or ev.kind.split(".")[0] in self.kinds


@dataclass(frozen=True)
class StreamEvent:
    """One event as the stream sends it (the ``data:`` JSON of an SSE message has these keys)."""

    id: int
    kind: str  # KINDS, or LOST
    host: str | None = None  # host name
    rack: str | None = None  # rack name (the host's rack when the event was written)
    task: int | None = None  # task id
    state: str | None = None  # host.state: new state; host.power: on/off/...; task: its status
    message: str = ""
    progress: int | None = None  # task.progress: 0..100
    at: str = ""  # ISO 8601 UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: EventStreamRow) -> StreamEvent:
        assert row.id is not None
        at = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        return cls(id=row.id, kind=row.kind, host=row.host_name, rack=row.rack_name, task=row.task_id,
                   state=row.state, message=row.message, progress=row.progress,
                   at=at.astimezone(UTC).isoformat().replace("+00:00", "Z"))


def format_sse(event: StreamEvent) -> bytes:
    """One SSE message: ``id: N`` then ``data: {json}`` (one line: JSON escapes newlines)."""
    data = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.id}\ndata: {data}\n\n".encode()


HEARTBEAT = b": keep-alive\n\n"
# Sent first: how long an EventSource waits before it reconnects (milliseconds, SSE ``retry:``).
RETRY = b"retry: 2000\n\n"


# --------------------------------------------------------------------------- reading
def _read(settings: Settings, after: int, limit: int) -> list[EventStreamRow]:
    with Session(get_engine(settings), expire_on_commit=False) as s:
        return list(s.exec(select_rows(EventStreamRow).where(EventStreamRow.id > after)  # type: ignore[operator]
                           .order_by(EventStreamRow.id).limit(limit)).all())  # type: ignore[arg-type]


def _head(settings: Settings) -> tuple[int, int]:
    """(newest id, pruned through id): where a live stream starts and what a resume lost."""
    with Session(get_engine(settings)) as s:
        top = s.execute(select(func.max(EventStreamRow.id))).scalar() or 0
        mark = s.get(EventStreamMark, 1)
        pruned = int(mark.pruned_through if mark else 0)
        return max(int(top), pruned), pruned  # everything pruned: the newest id is the mark


def _max_id(settings: Settings) -> int:
    with Session(get_engine(settings)) as s:
        return int(s.execute(select(func.max(EventStreamRow.id))).scalar() or 0)


def lost_event(last_id: int, pruned_through: int) -> StreamEvent:
    return StreamEvent(
        id=pruned_through, kind=LOST, state="lost",
        message=(f"events {last_id + 1}..{pruned_through} were lost: older than the event retention; "
                 "re-read the current state (GET /api/v1/hosts) and continue from here"),
        at=datetime.now(UTC).isoformat().replace("+00:00", "Z"))


async def stream(settings: Settings, filters: StreamFilter, last_id: int | None) -> AsyncIterator[StreamEvent]:
    """The events after ``last_id`` (None: from now on) that match ``filters``, forever, in id order.

    Each read runs on a worker thread with its own short session; between reads no database
    connection is held. Cancel the consuming task (client gone) to stop it.
    """
    top, pruned = await asyncio.to_thread(_head, settings)
    cursor = top if last_id is None else max(0, last_id)
    if last_id is not None and last_id < pruned:
        yield lost_event(last_id, pruned)
        cursor = pruned
    waker = _waker(settings)
    waker.subscribers += 1
    try:
        while True:
            seen = waker.generation
            rows = await asyncio.to_thread(_read, settings, cursor, BATCH)
            for row in rows:
                ev = StreamEvent.from_row(row)
                cursor = ev.id
                if filters.matches(ev):
                    yield ev
            if len(rows) == BATCH:
                continue  # catching up: read on without waiting
            await waker.wait(seen)
    finally:
        waker.subscribers -= 1


async def sse_body(settings: Settings, filters: StreamFilter, last_id: int | None,
                   heartbeat: float = HEARTBEAT_S) -> AsyncIterator[bytes]:
    """``stream()`` as the bytes of a text/event-stream body: retry hint, events, heartbeats.

    A live stream's start (the newest id) is fixed before the first byte is sent, so a client that
    reads the current state once it has the first line (``prov host watch``) misses nothing."""
    if last_id is None:
        last_id = (await asyncio.to_thread(_head, settings))[0]
    yield RETRY
    events = stream(settings, filters, last_id).__aiter__()
    pending: asyncio.Task[StreamEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=heartbeat)
            if not done:
                yield HEARTBEAT
                continue
            ev = pending.result()  # StopAsyncIteration cannot happen: stream() never ends
            pending = None
            yield format_sse(ev)
    finally:
        if pending is not None:
            pending.cancel()
        await events.aclose()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- waking up
class _Waker:
    """One per event loop and database: bumps ``generation`` when new events may exist."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.generation = 0
        self.subscribers = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pg = not settings.db_url.startswith("sqlite")

    def bump(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seen: int) -> None:
        self._ensure_running()
        if self.generation != seen:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), PG_POLL_S if self._pg else 5.0)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="prov-events-waker")

    async def _run(self) -> None:
        if self._pg:
            await self._listen()
        else:
            await self._poll(SQLITE_POLL_S)

    async def _poll(self, every: float) -> None:
        last = await asyncio.to_thread(_max_id, self.settings)
        while self.subscribers > 0:
            await asyncio.sleep(every)
            try:
                now = await asyncio.to_thread(_max_id, self.settings)
            except Exception as exc:  # database briefly away: streams keep their cursor
                log.warning("event stream poll failed: %s", exc.__class__.__name__)
                continue
            if now != last:
                last = now
                self.bump()

    async def _listen(self) -> None:
        """LISTEN on a connection of its own (not from the pool: it is held while waiting)."""
        import psycopg  # PostgreSQL only

        dsn = _libpq_dsn(self.settings.db_url)
        while self.subscribers > 0:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.bump()  # anything committed while we were not listening
                    while self.subscribers > 0:
                        got = False
                        async for _ in conn.notifies(timeout=PG_POLL_S, stop_after=1):
                            got = True
                        if got:  # a burst of commits: one wake-up reads them all
                            self.bump()
            except Exception as exc:
                log.warning("event stream listener: %s; polling until it is back", exc.__class__.__name__)
                self.bump()
                await asyncio.sleep(1.0)


def _libpq_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Waker]] = weakref.WeakKeyDictionary()


def _waker(settings: Settings) -> _Waker:
    per_loop = _wakers.setdefault(asyncio.get_running_loop(), {})
    key = str(get_engine(settings).url)  # as event_outbox.engine_key names it
    w = per_loop.get(key)
    if w is None:
        w = per_loop[key] = _Waker(settings)
    return w


def wake_local(engine_key: str) -> None:
    """Called (thread-safe) by event_outbox after a commit in this process: streams read now."""
    for loop, per_loop in list(_wakers.items()):
        w = per_loop.get(engine_key)
        if w is not None and w.subscribers and not loop.is_closed():
            loop.call_soon_threadsafe(w.bump)


event_outbox.on_commit.append(wake_local)
