# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""The route threads are few, and what must not wait for them does not (issue 18, /healthz under load).

api/offload.py: anyio's default limiter (sync routes, sync dependencies, run_in_threadpool) is cut to
ROUTE_THREADS once the app has started, on the loop that serves it; /healthz needs no thread, and
/readyz has threads of its own, so both answer while every route thread is taken.
"""

from __future__ import annotations

import threading
import time

import anyio.to_thread
from sqlalchemy import text
from sqlmodel import Session

from provisioner.api import offload
from provisioner.api.routes import health
from tests.support.install import Api, api, db, settings  # noqa: F401


def test_the_serving_loop_has_only_route_threads_threads(api: Api) -> None:
    portal = api.client.portal
    assert portal is not None
    tokens = portal.call(lambda: _total_tokens())
    assert tokens == offload.ROUTE_THREADS < 40  # anyio's default


async def _total_tokens() -> float:
    return anyio.to_thread.current_default_thread_limiter().total_tokens


def test_health_answers_while_every_route_thread_is_taken(api: Api, db: Session) -> None:
    """Every route thread blocked (a sync route waiting on something): /healthz and /readyz still
    answer at once, and a sync route waits for a thread instead of failing."""
    db.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))  # as migrated
    db.execute(text("INSERT INTO alembic_version VALUES ('test')"))
    db.commit()
    portal = api.client.portal
    assert portal is not None
    release = threading.Event()
    blocked = [portal.start_task_soon(anyio.to_thread.run_sync, release.wait)
               for _ in range(offload.ROUTE_THREADS)]
    try:
        deadline = time.monotonic() + 5
        while portal.call(_borrowed) < offload.ROUTE_THREADS:
            assert time.monotonic() < deadline, "the blocking calls did not take the route threads"
            time.sleep(0.01)
        t0 = time.monotonic()
        assert api.client.get("/healthz").status_code == 200
        ready = api.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        assert time.monotonic() - t0 < health.READY_TIMEOUT_S
        # a sync route queues for a route thread; once one is free it is served
        timer = threading.Timer(0.3, release.set)
        timer.start()
        r = api.client.get("/api/v1/racks", headers=api.auth)
        assert r.status_code == 200 and time.monotonic() - t0 >= 0.3
    finally:
        release.set()
        for f in blocked:
            f.result(5)


async def _borrowed() -> float:
    return anyio.to_thread.current_default_thread_limiter().borrowed_tokens
