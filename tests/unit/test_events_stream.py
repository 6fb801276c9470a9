"""The event stream's outbox and reader on SQLite: ids, kinds, filters, resume, retention gap.

Writes go through the real writers (crud, lifecycle.advance, the power manager's bulk UPDATE, task
rows as the task runner writes them); reads through events_stream.stream(), the generator behind
GET /api/v1/events/stream and the web console.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from provisioner import crud, event_outbox, events_stream, lifecycle, migrate
from provisioner import states as S
from provisioner.db import get_engine
from provisioner.events_stream import LOST, StreamEvent, StreamFilter
from provisioner.models import Event, EventStreamRow, Host, Task
from provisioner.schemas import HostCreate, HostUpdate, RackCreate
from provisioner.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path)
    migrate.upgrade(s)
    return s


def _rows(settings: Settings) -> list[EventStreamRow]:
    with Session(get_engine(settings)) as s:
        return list(s.exec(select(EventStreamRow).order_by(EventStreamRow.id)).all())  # type: ignore[arg-type]


def _world(settings: Settings) -> None:
    """Rack r1 with web01 and web02; web01 verified, powered on, installing with progress; drift on web02."""
    with Session(get_engine(settings), expire_on_commit=False) as s:
        crud.create_rack(s, data=RackCreate(name="r1"))
        h1 = crud.create_host(s, data=HostCreate(name="web01", rack="r1"))
        h2 = crud.create_host(s, data=HostCreate(name="web02", rack="r1"))
        lifecycle.advance(s, h1, S.VERIFY, message="checking the BMC")
        # the power manager's bulk UPDATE (conductor/power.py _record)
        s.execute(update(Host).where(Host.id == h1.id).values(power_state="on"))  # type: ignore[arg-type]
        s.commit()
        s.execute(update(Host).where(Host.id == h1.id).values(power_state="on"))  # type: ignore[arg-type]
        s.commit()  # unchanged: no event
        task = Task(kind="install", host_id=h1.id)
        s.add(task)
        s.commit()
        for pct in (10, 10, 50):  # the repeated 10 is a heartbeat: no event
            task.progress = pct
            task.heartbeat_at = datetime.now(UTC)
            s.add(task)
            s.commit()
        s.add(Event(host_id=h2.id, event="drift", message="drift detected: bmc"))
        s.add(Event(host_id=h1.id, event="note", message="ansible: ok"))
        s.commit()
        crud.update_host(s, h2, data=HostUpdate(roles=["web"]))


def test_ids_monotonic_and_kinds(settings: Settings) -> None:
    _world(settings)
    rows = _rows(settings)
    ids = [r.id for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    seen = [(r.kind, r.host_name, r.state) for r in rows]
    assert ("inventory", None, "created") in seen  # the rack
    assert ("inventory", "web01", "created") in seen
    assert ("host.state", "web01", S.ENROLLED) in seen
    assert ("host.state", "web01", S.VERIFYING) in seen
    assert [x for x in seen if x[0] == "host.power"] == [("host.power", "web01", "on")]
    progress = [(r.state, r.progress) for r in rows if r.kind == "task.progress"]
    assert progress == [("pending", 0), ("pending", 10), ("pending", 50)]
    assert ("drift", "web02", "drift") in seen
    assert ("host.history", "web01", "note") in seen
    assert ("inventory", "web02", "updated") in seen
    assert all(r.rack_name == "r1" for r in rows if r.host_name)
    upd = next(r for r in rows if r.kind == "inventory" and r.state == "updated")
    assert upd.message == "host web02 updated: roles"


def test_rolled_back_change_has_no_event(settings: Settings) -> None:
    _world(settings)
    before = len(_rows(settings))
    with Session(get_engine(settings)) as s:
        s.add(Event(host_id=1, event="note", message="never"))
        s.flush()
        s.rollback()
        s.add(Event(host_id=1, event="note", message="kept"))
        s.commit()
    rows = _rows(settings)
    assert len(rows) == before + 1 and rows[-1].message == "kept"


async def _collect(settings: Settings, f: StreamFilter, last_id: int | None, n: int,
                   timeout: float = 5.0) -> list[StreamEvent]:
    out: list[StreamEvent] = []

    async def run() -> None:
        async for ev in events_stream.stream(settings, f, last_id):
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


def test_filters(settings: Settings) -> None:
    _world(settings)
    rows = _rows(settings)
    by_host = asyncio.run(_collect(settings, StreamFilter.of(hosts=["web02"]), 0,
                                   sum(r.host_name == "web02" for r in rows)))
    assert {e.host for e in by_host} == {"web02"}
    kinds = asyncio.run(_collect(settings, StreamFilter.of(kinds=["host.power,drift"]), 0, 2))
    assert [e.kind for e in kinds] == ["host.power", "drift"]
    prefix = StreamFilter.of(kinds=["host"])
    assert prefix.matches(StreamEvent(id=1, kind="host.state")) and not prefix.matches(
        StreamEvent(id=1, kind="task.progress"))
    assert StreamFilter.of(kinds=["hosts"]).bad_kind() == "hosts"
    assert StreamFilter.of(racks=["r2"]).matches(StreamEvent(id=1, kind=LOST))  # a loss is always told
    rack = asyncio.run(_collect(settings, StreamFilter.of(racks=["r1"], kinds=["task"]), 0, 3))
    assert [e.progress for e in rack] == [0, 10, 50] and all(e.task == rack[0].task for e in rack)


def test_resume_gets_exactly_the_missed_ones_and_live_ones(settings: Settings) -> None:
    _world(settings)
    rows = _rows(settings)
    mid = rows[len(rows) // 2].id
    assert mid is not None
    got = asyncio.run(_collect(settings, StreamFilter(), mid, len(rows) - len(rows) // 2 - 1))
    assert [e.id for e in got] == [r.id for r in rows if r.id is not None and r.id > mid]

    async def live() -> list[StreamEvent]:
        task = asyncio.ensure_future(_collect(settings, StreamFilter(), None, 2))
        await asyncio.sleep(0.3)  # the stream starts at the newest id

        def write() -> None:
            with Session(get_engine(settings)) as s:
                s.add(Event(host_id=1, event="note", message="live 1"))
                s.commit()
                s.add(Event(host_id=1, event="note", message="live 2"))
                s.commit()
        t0 = asyncio.get_running_loop().time()
        await asyncio.to_thread(write)
        out = await task
        assert asyncio.get_running_loop().time() - t0 < 1.0
        return out

    got = asyncio.run(live())
    assert [e.message for e in got] == ["live 1", "live 2"]


def test_retention_gap_is_told_first(settings: Settings) -> None:
    _world(settings)
    rows = _rows(settings)
    with Session(get_engine(settings)) as s:
        through = event_outbox.prune(s, datetime.now(UTC) - timedelta(days=1), keep_rows=2)
        s.commit()
    assert through == rows[-3].id
    got = asyncio.run(_collect(settings, StreamFilter.of(hosts=["nobody"]), 1, 1))
    assert got[0].kind == LOST and got[0].id == through and f"events 2..{through}" in got[0].message
    # resuming from the lost event's id: no second loss, just the retained ones
    kept = asyncio.run(_collect(settings, StreamFilter(), through, 2))
    assert [e.id for e in kept] == [rows[-2].id, rows[-1].id]


def test_format_sse() -> None:
    ev = StreamEvent(id=7, kind="host.history", host="web01", message="two\nlines", at="2026-12-03T00:00:00Z")
    raw = events_stream.format_sse(ev).decode()
    assert raw.startswith("id: 7\ndata: ") and raw.endswith("\n\n") and raw.count("\n") == 3
    data = json.loads(raw.split("data: ", 1)[1])
    assert data == {"id": 7, "kind": "host.history", "host": "web01", "rack": None, "task": None, "state": None,
                    "message": "two\nlines", "progress": None, "at": "2026-12-03T00:00:00Z"}


def test_sse_body_sends_retry_then_heartbeats_then_events(settings: Settings) -> None:
    async def run() -> list[bytes]:
        body = events_stream.sse_body(settings, StreamFilter(), None, heartbeat=0.1)
        out = [await body.__anext__(), await body.__anext__()]  # retry hint, a heartbeat (nothing happened)

        def write() -> None:
            with Session(get_engine(settings)) as s:
                crud.create_rack(s, data=RackCreate(name="hb"))
        await asyncio.to_thread(write)
        while not out[-1].startswith(b"id: "):
            out.append(await asyncio.wait_for(body.__anext__(), 5))
        await body.aclose()  # type: ignore[attr-defined]
        return out

    out = asyncio.run(run())
    assert out[0] == events_stream.RETRY and out[1] == events_stream.HEARTBEAT
    assert b'"kind":"inventory"' in out[-1] and b"rack hb created" in out[-1]


def test_stream_caps_per_token_and_total() -> None:
    from provisioner.api.routes import events_stream as route

    assert route._claim("t1", total=3, per_token=2) is None
    assert route._claim("t1", total=3, per_token=2) is None
    refused = route._claim("t1", total=3, per_token=2)
    assert refused is not None and refused.status_code == 429 and refused.headers["retry-after"]
    assert json.loads(bytes(refused.body))["error"] == "too_many_streams"
    assert route._claim("t2", total=3, per_token=2) is None
    full = route._claim("t3", total=3, per_token=2)
    assert full is not None and full.status_code == 503
    for key in ("t1", "t1", "t2"):
        route._release(key)
    assert route.open_streams() == 0 and route._claim("t3", total=3, per_token=2) is None
    route._release("t3")
