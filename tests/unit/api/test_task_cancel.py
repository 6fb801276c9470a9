from __future__ import annotations

import time
from pathlib import Path

import pytest

from provisioner.conductor import engine
from provisioner.conductor.tasks import TaskContext
from provisioner.errors import Conflict
from tests.support.controller import live_controller


def _slow(ctx: TaskContext) -> None:
    while True:
        ctx.progress(None, step="waiting")  # raises TaskCancelled once cancelled
        time.sleep(0.05)


engine.register("test-slow", _slow)


def test_cancel_a_running_task_then_409(tmp_path: Path) -> None:
    with live_controller(tmp_path / "data") as ctl:

        task = engine.submit("test-slow", settings=ctl.settings)
        with ctl.client() as c:
            c.post(f"/api/v1/tasks/{task.id}/cancel")
            deadline = time.monotonic() + 10
            while c.get(f"/api/v1/tasks/{task.id}")["status"] != "cancelled":
                assert time.monotonic() < deadline, "task was not cancelled"
                time.sleep(0.05)
            with pytest.raises(Conflict, match="already cancelled"):
                c.post(f"/api/v1/tasks/{task.id}/cancel")
