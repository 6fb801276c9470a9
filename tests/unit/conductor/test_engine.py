"""The workflow engine (conductor/engine.py) on SQLite: submit, cancel, one workflow per host,
fencing, take-over and resume at the step. Real DBOS, in-process, a fresh data dir per test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS
from sqlmodel import Session, select

from provisioner import migrate
from provisioner import states as S
from provisioner.conductor import engine
from provisioner.conductor.tasks import CANCEL_KEY, TaskContext
from provisioner.db import get_engine
from provisioner.errors import Conflict
from provisioner.models import Task
from provisioner.settings import Settings

# What the runners below did, per test (reset by the fixture).
RAN: list[str] = []
GATE = threading.Event()  # a runner waits here until the test lets it go


def _noop(ctx: TaskContext) -> dict[str, Any]:
    RAN.append(f"noop {ctx.params.get('n')}")
    return {"n": ctx.params.get("n"), "secret_seen": ctx.private.get("secret") is not None}


def _until_cancelled(ctx: TaskContext) -> None:
    RAN.append("loop")
    while True:
        ctx.progress(None, step="waiting")  # TaskCancelled (flag) or Fenced (owner moved)
        time.sleep(0.02)


def _gated(ctx: TaskContext) -> None:
    RAN.append("gated")
    GATE.wait(10)


def _three_steps(ctx: TaskContext) -> dict[str, Any]:
    """Like the install: named steps; step b waits for the gate with a heartbeat."""

    def a() -> None:
        RAN.append("a")
        ctx.progress(10, step="a")

    def b() -> None:
        RAN.append(f"b resumed={ctx.resumed}")
        ctx.progress(50, step="b")
        while not GATE.is_set():
            ctx.progress(None)
            time.sleep(0.02)

    def c() -> None:
        RAN.append("c")
        ctx.progress(90, step="c")

    for name, fn in (("a", a), ("b", b), ("c", c)):
        engine.run_step(f"test.{name}", fn)
    return {"done": True}


engine.register("test-noop", _noop)
engine.register("test-loop", _until_cancelled)
engine.register("test-gated", _gated)
engine.register("test-host", _until_cancelled, exclusive=True)
engine.register("test-steps", _three_steps, resumable=True)
engine.register("test-steps-once", _three_steps)  # not resumable: failed after a crash


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(data_dir=tmp_path / "data", power_sync_enabled=False, tftp_enabled=False, dhcp_enabled=False,
                 log_json=False, task_concurrency=1, engine_poll_s=0.02)
    s.ensure_dirs()
    migrate.upgrade(s)
    RAN.clear()
    GATE.clear()
    engine.stop()
    yield s
    GATE.set()
    engine.stop()


def row(settings: Settings, task_id: int | None) -> Task:
    with Session(get_engine(settings)) as s:
        t = s.get(Task, task_id)
        assert t is not None
        return t


def until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_submit_runs_a_named_workflow_and_ends_the_row(settings: Settings) -> None:
    t0 = time.perf_counter()
    engine.start(settings, executor="x:1")
    started = time.perf_counter() - t0
    task = engine.submit("test-noop", params={"n": 7}, private={"secret": "s3cret"}, settings=settings)
    assert task.status == S.TASK_PENDING and task.owner == "x:1"
    done = engine.wait(task.id or 0, timeout=10)
    assert done.status == S.TASK_SUCCEEDED, done.error
    assert done.result == {"n": 7, "secret_seen": True} and done.progress == 100
    assert "s3cret" not in str(done.params)  # private inputs never reach the public row
    # The row ends inside the workflow's last step; DBOS records its own SUCCESS just after,
    # so a loaded machine can read PENDING between the two (a CI run did).
    until(lambda: getattr(DBOS.get_workflow_status(f"task-{task.id}"), "status", None) == "SUCCESS")
    wf = DBOS.get_workflow_status(f"task-{task.id}")
    assert wf is not None and wf.status == "SUCCESS" and wf.executor_id == "x:1"
    t0 = time.perf_counter()
    engine.stop()
    stopped = time.perf_counter() - t0
    assert started < 3 and stopped < 1, (started, stopped)  # tests start and stop it often


def test_unknown_kind_is_refused_before_any_row(settings: Settings) -> None:
    with pytest.raises(ValueError, match="no workflow registered"):
        engine.submit("no-such-kind", settings=settings)


def test_cancel_a_running_task_from_the_row_flag(settings: Settings) -> None:
    engine.start(settings)
    task = engine.submit("test-loop", settings=settings)
    until(lambda: row(settings, task.id).status == S.TASK_RUNNING)
    assert engine.cancel(task.id or 0, settings)
    done = engine.wait(task.id or 0, timeout=10)
    assert done.status == S.TASK_CANCELLED and done.result.get(CANCEL_KEY) is True
    assert not engine.cancel(task.id or 0, settings), "a finished task cannot be cancelled again"


def test_cancel_a_queued_task_ends_it_without_running(settings: Settings) -> None:
    engine.start(settings)  # task_concurrency=1: the second task waits in the queue
    first = engine.submit("test-gated", settings=settings)
    until(lambda: row(settings, first.id).status == S.TASK_RUNNING)
    queued = engine.submit("test-noop", params={"n": 2}, settings=settings)
    assert engine.cancel(queued.id or 0, settings)
    assert row(settings, queued.id).status == S.TASK_CANCELLED
    GATE.set()
    assert engine.wait(first.id or 0, timeout=10).status == S.TASK_SUCCEEDED
    time.sleep(0.3)  # a queue poll or two: the cancelled one must not start
    assert RAN == ["gated"]
    wf = DBOS.get_workflow_status(f"task-{queued.id}")
    assert wf is not None and wf.status == "CANCELLED"


def test_one_workflow_per_host(settings: Settings) -> None:
    engine.start(settings)
    first = engine.submit("test-host", host_id=None, settings=settings)  # no host: never deduplicated
    with Session(get_engine(settings)) as s:
        from provisioner.models import Host

        h = Host(name="h1")
        s.add(h)
        s.commit()
        hid = h.id
    one = engine.submit("test-host", host_id=hid, settings=settings)
    with pytest.raises(Conflict) as ei:
        engine.submit("test-host", host_id=hid, settings=settings)
    assert ei.value.http_status == 409
    # the refused request's row says why; the first one is untouched
    with Session(get_engine(settings)) as s:
        rows = list(s.exec(select(Task).where(Task.host_id == hid).order_by(Task.id)).all())  # type: ignore[arg-type]
    assert rows[0].id == one.id and rows[1].status == S.TASK_FAILED
    assert "another workflow of this host" in (rows[1].error or "")
    engine.cancel(one.id or 0, settings)
    engine.cancel(first.id or 0, settings)
    engine.wait(one.id or 0, timeout=10)
    # finished: the host is free again
    again = engine.submit("test-host", host_id=hid, settings=settings)
    engine.cancel(again.id or 0, settings)
    assert engine.wait(again.id or 0, timeout=10).status == S.TASK_CANCELLED


def test_a_fenced_runner_stops_and_leaves_the_row_to_its_new_owner(settings: Settings) -> None:
    engine.start(settings, executor="old:1")
    task = engine.submit("test-loop", settings=settings)
    until(lambda: row(settings, task.id).status == S.TASK_RUNNING)
    with Session(get_engine(settings)) as s:  # what take_over() on another conductor does
        t = s.get(Task, task.id)
        assert t is not None
        t.owner = "new:2"
        s.add(t)
        s.commit()
    until(lambda: DBOS.get_workflow_status(f"task-{task.id}").status == "SUCCESS")  # type: ignore[union-attr]
    t = row(settings, task.id)
    # the old owner wrote nothing more: not cancelled, not failed, still the new owner's
    assert t.status == S.TASK_RUNNING and t.owner == "new:2" and t.finished_at is None


def test_take_over_resumes_at_the_step(settings: Settings) -> None:
    """A conductor stops mid-step; another executor takes its workflows over and the workflow
    resumes in that step (the finished one is not run again); the first execution, still in the
    process, is fenced."""
    settings.engine_takeover_on_start = False
    engine.start(settings, executor="dead:1")
    task = engine.submit("test-steps", settings=settings)
    until(lambda: row(settings, task.id).step == "b")
    engine.stop()
    engine.start(settings, executor="alive:2")
    assert row(settings, task.id).owner == "dead:1"  # not at start: takeover_on_start is off
    assert engine.take_over(["dead:1", "alive:2"]) == 1  # its own id is ignored
    until(lambda: "b resumed=True" in RAN)
    GATE.set()
    done = engine.wait(task.id or 0, timeout=10)
    assert done.status == S.TASK_SUCCEEDED and done.owner == "alive:2", done.error
    assert RAN.count("a") == 1 and RAN.count("c") == 1, RAN
    assert RAN[:2] == ["a", "b resumed=False"] and "b resumed=True" in RAN


def test_sqlite_start_takes_over_and_fails_what_cannot_resume(settings: Settings) -> None:
    engine.start(settings, executor="dead:1")
    once = engine.submit("test-steps-once", settings=settings)
    until(lambda: row(settings, once.id).step == "b")
    engine.stop()
    with Session(get_engine(settings)) as s:  # a row no workflow stands behind (an old runner's)
        orphan = Task(kind="test-noop", status=S.TASK_RUNNING, step="x", owner="gone:0")
        s.add(orphan)
        s.commit()
        orphan_id = orphan.id
    engine.start(settings, executor="alive:2")  # SQLite: one process, so every other one is dead
    done = engine.wait(once.id or 0, timeout=10)
    assert done.status == S.TASK_FAILED and done.error == "controller dead:1 stopped while this task was b"
    gone = engine.wait(orphan_id or 0, timeout=10)
    assert gone.status == S.TASK_FAILED and gone.error == "controller gone:0 stopped while this task was x"
    GATE.set()


def test_system_database_is_its_own_file_on_sqlite(settings: Settings) -> None:
    assert engine.system_database_url(settings) == f"sqlite:///{settings.data_dir / 'dbos.sqlite'}"
    pg = Settings(data_dir=settings.data_dir, database_url="postgresql+psycopg://u@db/prov")
    assert engine.system_database_url(pg) == "postgresql+psycopg://u@db/prov"


def test_an_api_only_process_enqueues_and_a_conductor_runs_it(settings: Settings) -> None:
    """The api role never runs a workflow (issue 14): it enqueues through a DBOSClient; the
    conductor's engine, started later on the same database, runs what it queued."""
    api = settings.model_copy(update={"roles": ["api"]})
    engine.start(api, executor="api:1")
    task = engine.submit("test-noop", params={"n": 3}, settings=api)
    time.sleep(0.3)  # several queue polls of a launched engine
    assert row(settings, task.id).status == S.TASK_PENDING and RAN == []
    engine.stop()
    engine.start(settings, executor="conductor:1")
    done = engine.wait(task.id or 0, timeout=10)
    assert done.status == S.TASK_SUCCEEDED and done.owner == "conductor:1" and RAN == ["noop 3"]
