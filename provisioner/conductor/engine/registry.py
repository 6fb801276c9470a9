"""The engine's registry (kind -> runner) and its process-wide state."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from provisioner.conductor.tasks import Runner
from provisioner.settings import Settings

log = logging.getLogger("provisioner.conductor.engine")

INSTALL_QUEUE = "install"
TASK_QUEUE = "tasks"
WORKFLOW = "prov.task"
TAKEN_OVER_KEY = "taken_over_from"  # Task.result: the executor a task was taken over from
# DBOS recovers only workflows of its own application version; every conductor of one release
# must share it (DBOS would otherwise hash the registered code, which differs per import order).
APP_VERSION = "prov-1"


@dataclass(frozen=True)
class Kind:
    runner: Runner
    queue: str = TASK_QUEUE
    exclusive: bool = False  # one workflow of this kind per host at a time (deduplication)
    resumable: bool = False  # re-run after a crash (it checkpoints its own steps) instead of failed


KINDS: dict[str, Kind] = {}


def register(kind: str, runner: Runner, *, queue: str = TASK_QUEUE, exclusive: bool = False,
             resumable: bool = False) -> None:
    """kind -> a named module-level runner (params live in the Task row: no closure, no partial)."""
    KINDS[kind] = Kind(runner, queue, exclusive, resumable)


class _State:
    settings: Settings | None = None
    executor_id: str = ""
    url: str = ""
    # A process without the conductor role (the api role) only enqueues: a DBOSClient, no DBOS
    # launched, so it never runs a workflow, not even one recovered through DBOS's internal queue.
    client: Any = None


_state = _State()
_lock = threading.RLock()


def executor_id() -> str:
    return _state.executor_id


def running() -> bool:
    return _state.settings is not None


_R = TypeVar("_R")


def _off_loop(fn: Callable[[], _R]) -> _R:
    """``fn()``, in a helper thread when this thread runs an event loop: DBOS refuses its
    synchronous API there (``check_async``), and the API's lifespan and async routes run there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    out: list[_R] = []
    err: list[BaseException] = []

    def call() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            err.append(exc)

    t = threading.Thread(target=call, name="prov-engine-call")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def _settings() -> Settings:
    if _state.settings is None:
        raise RuntimeError("the workflow engine is not started (engine.start)")
    return _state.settings


