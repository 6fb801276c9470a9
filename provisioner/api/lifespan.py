"""What starts and stops with the API process.

create_app() calls ``install(app, settings)``. On start-up: the timeout
checker, TaskRunner.recover() (tasks cut off by a previous controller), and -
only when their modules exist - power sync and the boot services (DHCP/TFTP/
HTTP). Each optional service's ``start(settings)`` returns a stop callable. A
missing optional module is skipped; a failing one is logged and the API still
starts, because an operator needs the API to find out what is wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from provisioner.conductor import install as install_workflow
from provisioner.conductor import tasks, timeouts
from provisioner.settings import Settings

log = logging.getLogger(__name__)

OPTIONAL_SERVICES = ("provisioner.conductor.power_sync", "provisioner.drivers.boot.service",
                     "provisioner.templates_catalog",  # render-checks every template at start-up
                     "provisioner.conductor.drift_check")  # GitOps drift vs the last applied inventory


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def start_services(settings: Settings) -> list[Callable[[], None]]:
    stops: list[Callable[[], None]] = [timeouts.start(settings)]
    try:
        # install registers its resumer on import: a cut-off install continues from its step.
        assert "install" in tasks.RESUMERS, install_workflow.__name__
        recovered = tasks.get_runner(settings).recover()
        if recovered:
            log.warning("recovered %d task(s) left by a previous controller: %s", len(recovered), recovered)
    except Exception:
        log.exception("task recovery failed")
    for name in OPTIONAL_SERVICES:
        if not _module_exists(name):
            log.info("optional service %s not installed; skipped", name)
            continue
        try:
            stop = importlib.import_module(name).start(settings)
        except Exception:
            log.exception("optional service %s failed to start; the API runs without it", name)
            continue
        if callable(stop):
            stops.append(stop)
    return stops


def stop_services(stops: list[Callable[[], None]]) -> None:
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
