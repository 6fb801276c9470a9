"""What starts and stops with the API process.

create_app() calls ``install(app, settings)``. On start-up: the timeout
checker, TaskRunner.recover() (tasks cut off by a previous controller), then
the ``SERVICES`` below, in order. Each service's ``start(settings)`` returns a
stop callable. A service that fails to start is logged and the API still
starts, because an operator needs the API to find out what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from provisioner import templates_catalog
from provisioner.conductor import boot_service, drift_check, power_sync, tasks, timeouts
from provisioner.conductor import install as install_workflow
from provisioner.settings import Settings

log = logging.getLogger(__name__)

Stop = Callable[[], None]
# (name in the log, start function); each returns its stop callable (or None: nothing to stop).
SERVICES: tuple[tuple[str, Callable[[Settings], Stop | None]], ...] = (
    ("power sync", power_sync.start),
    ("boot services", boot_service.start),  # DHCP / TFTP / HTTP boot, each as settings enable it
    ("template check", templates_catalog.start),  # render-checks every template at start-up
    ("drift check", drift_check.start),  # GitOps drift vs the last applied inventory
)


def start_services(settings: Settings) -> list[Stop]:
    stops: list[Stop] = [timeouts.start(settings)]
    try:
        # install registers its resumer on import: a cut-off install continues from its step.
        assert "install" in tasks.RESUMERS, install_workflow.__name__
        recovered = tasks.get_runner(settings).recover()
        if recovered:
            log.warning("recovered %d task(s) left by a previous controller: %s", len(recovered), recovered)
    except Exception:
        log.exception("task recovery failed")
    for name, start in SERVICES:
        try:
            stop = start(settings)
        except Exception:
            log.exception("service %s failed to start; the API runs without it", name)
            continue
        if callable(stop):
            stops.append(stop)
    return stops


def stop_services(stops: list[Stop]) -> None:
    for stop in reversed(stops):
        try:
            stop()
        except Exception:
            log.exception("stopping a service failed")
    tasks.reset_runner()


def install(app: FastAPI, settings: Settings) -> None:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stops = start_services(settings) if getattr(_app.state, "start_services", True) else []
        try:
            yield
        finally:
            stop_services(stops)

    app.router.lifespan_context = lifespan
