"""A task's heartbeat and progress writes survive a busy database (issue 18: installs crashed when
the pool timed out in their wait loop's heartbeat)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from provisioner import migrate
from provisioner.conductor import tasks
from provisioner.db import get_engine
from provisioner.models import Task
from provisioner.settings import Settings


class FlakyContext(tasks.TaskContext):
    """A TaskContext whose session factory raises ``error`` on its first ``failures`` calls."""

    failures = 0
    error: Callable[[], Exception] = TimeoutError
    calls = 0

    def session(self) -> Session:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return super().session()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlakyContext:
    monkeypatch.setattr(tasks.time, "sleep", lambda _s: None)  # the backoff, not under test
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    with Session(get_engine(settings), expire_on_commit=False) as s:
        task = Task(kind="install", params={}, owner="me")
        s.add(task)
        s.commit()
        assert task.id is not None
    return FlakyContext(task.id, "install", None, None, {}, settings, owner="me")  # progress CASes on owner


def _task(ctx: tasks.TaskContext) -> Task:
    with Session(get_engine(ctx.settings)) as s:
        task = s.get(Task, ctx.task_id)
        assert task is not None
        return task


def test_heartbeat_skips_a_beat_on_a_pool_timeout(ctx: FlakyContext) -> None:
    ctx.failures = 2
    ctx.progress(None)  # beat 1: skipped, no crash
    ctx.progress(None)  # beat 2: skipped
    assert _task(ctx).heartbeat_at is None
    ctx.progress(None)  # beat 3: the database answers again
    assert _task(ctx).heartbeat_at is not None
    assert ctx._skipped_beats == 0


@pytest.mark.parametrize("error", [
    TimeoutError,
    lambda: PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
    lambda: OperationalError("UPDATE task", {}, Exception("database is locked")),
])
def test_step_write_retried_with_backoff(ctx: FlakyContext, error: Callable[[], Exception]) -> None:
    ctx.failures = 3
    ctx.error = error
    ctx.progress(40, step="wait-installer")  # attempts 1-3 fail, the 4th writes
    task = _task(ctx)
    assert (task.progress, task.step) == (40, "wait-installer")


def test_step_write_gives_up_after_its_attempts(ctx: FlakyContext) -> None:
    ctx.failures = 10
    with pytest.raises(TimeoutError):
        ctx.progress(40, step="wait-installer")
    assert ctx.calls == 4


def test_heartbeats_give_up_after_a_long_outage(ctx: FlakyContext) -> None:
    ctx.failures = tasks.MAX_SKIPPED_BEATS + 5
    for _ in range(tasks.MAX_SKIPPED_BEATS):
        ctx.progress(None)
    with pytest.raises(TimeoutError):
        ctx.progress(None)


def test_a_bug_is_not_retried(ctx: FlakyContext) -> None:
    ctx.failures = 1
    ctx.error = lambda: ValueError("a bug")
    with pytest.raises(ValueError):
        ctx.progress(None)
    assert ctx.calls == 1


def test_cancel_still_noticed_when_the_beat_is_skipped(ctx: FlakyContext) -> None:
    ctx.failures = 1
    ctx.cancel_event.set()
    with pytest.raises(tasks.TaskCancelled):
        ctx.progress(None)


def test_install_wait_loop_reads_the_host_through_a_busy_database(ctx: FlakyContext) -> None:
    from provisioner.conductor import install

    ctx.failures = 2
    ctx.host_id = 12345  # no such host: the read succeeds on its 3rd try and says so
    with pytest.raises(install.InstallFailed, match="deleted"):
        install._host(ctx)
    assert ctx.calls == 3
