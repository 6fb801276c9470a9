"""What starts and stops with a ``prov serve`` process, by the roles it runs (issue 14).

create_app() calls ``install(app, settings)``; a process without the api role (a conductor
or a boot agent alone) calls ``start_services``/``stop_services`` itself (server.run_headless).
Every process first joins the cluster (provisioner/cluster.py: its member row and heartbeat),
then starts what its roles need (``settings.role_set``; no ``--role``: all of them):

* api: nothing else: it serves the API. It runs no periodic job and no boot service; once
  the workflow engine lands, task submission only enqueues (the api role never runs a workflow);
* conductor: the timeout checker, the workflow engine (conductor/engine: DBOS, executor id =
  the member id; it resumes what this executor left), the takeover of dead conductors' work
  (conductor/takeover.py), power sync and the GitOps drift check;
* boot: DHCP / TFTP / HTTP boot for ``settings.boot_networks`` (conductor/boot_service.py).

The template check runs in every process with the api or conductor role (both render).
Each service's ``start(settings)`` returns a stop callable. A service that fails to start is
logged and the process still starts, because an operator needs the API to find out what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from provisioner import cluster, templates_catalog
from provisioner.conductor import boot_service, drift_check, engine, power_sync, takeover, timeouts
from provisioner.settings import Settings

log = logging.getLogger(__name__)

Stop = Callable[[], None]
API, CONDUCTOR, BOOT = "api", "conductor", "boot"
# (name in the log, start function); each returns its stop callable (or None: nothing to stop).
SERVICES: tuple[tuple[str, Callable[[Settings], Stop | None]], ...] = (
    ("power sync", power_sync.start),
    ("boot services", boot_service.start),  # DHCP / TFTP / HTTP boot, each as settings enable it
    ("template check", templates_catalog.start),  # render-checks every template at start-up
    ("drift check", drift_check.start),  # GitOps drift vs the last applied inventory
)
# The roles that run each service; a service not named here runs in every process.
SERVICE_ROLES: dict[str, frozenset[str]] = {
    "power sync": frozenset({CONDUCTOR}),
    "boot services": frozenset({BOOT}),
    "template check": frozenset({API, CONDUCTOR}),
    "drift check": frozenset({CONDUCTOR}),
}


def _conductor_start(settings: Settings, executor: str | None = None) -> list[Stop]:
    stops: list[Stop] = [timeouts.start(settings)]
    try:
        stops.append(engine.start(settings, executor=executor))
    except Exception:
        log.exception("the workflow engine failed to start")
        return stops
    if executor is not None:  # dead conductors' work is run here (conductor/takeover.py)
        stops.append(takeover.start(settings, executor))
    return stops


def start_services(settings: Settings, roles: Iterable[str] | None = None) -> list[Stop]:
    """Join the cluster, then start the services of ``roles`` (default: ``settings.role_set``)."""
    wanted = frozenset(roles) if roles is not None else settings.role_set
    membership = cluster.join(settings, wanted, settings.boot_networks if BOOT in wanted else (),
                              api_url=settings.base_url if API in wanted else None)
    # stopped last (stop_services runs the list backwards): the member reads "up" while its
    # services wind down, and "stopped" once nothing of it runs.
    stops: list[Stop] = [lambda: cluster.leave(membership)]
    if CONDUCTOR in wanted:
        stops += _conductor_start(settings, membership.member_id)
    elif API in wanted:
        # the api role only enqueues (a DBOS client, no workflow runs here): connected now, not
        # by the first install request
        try:
            stops.append(engine.start(settings, executor=membership.member_id))
        except Exception:
            log.exception("the workflow engine's client failed to start")
    for name, start in SERVICES:
        if not SERVICE_ROLES.get(name, wanted) & wanted:
            continue
        try:
            stop = start(settings)
        except Exception:
            log.exception("service %s failed to start; the process runs without it", name)
            continue
        if callable(stop):
            stops.append(stop)
    log.info("roles started: %s (cluster member %s)", ", ".join(sorted(wanted)), membership.member_id)
    return stops


def stop_services(stops: list[Stop]) -> None:
    for stop in reversed(stops):
        try:
            stop()
        except Exception:
            log.exception("stopping a service failed")


def install(app: FastAPI, settings: Settings) -> None:
    # The roles this app's process runs, for whatever must consult them (a route, the engine).
    app.state.roles = settings.role_set

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stops = start_services(settings, _app.state.roles) if getattr(_app.state, "start_services", True) else []
        try:
            yield
        finally:
            stop_services(stops)

    app.router.lifespan_context = lifespan
