"""Prometheus metrics at /metrics (token required: any operator scope, or the scrape-only ``metrics`` one).

Request counts and latency come from MetricsMiddleware; hosts per state are
counted at scrape time; task durations are observed from finished task rows.
The process-wide series (BMC calls, TFTP, HTTP boot bytes, installs, build and
process info: provisioner/metrics.py) and the DHCP lease count (dnsmasq's lease
file, read at scrape time) join them in the same answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import Session, col, select

from provisioner import crud
from provisioner import metrics as prov_metrics
from provisioner import states as S
from provisioner.api.deps import SessionDep, require_token
from provisioner.api.middleware import Metrics
from provisioner.conductor import drift_check
from provisioner.db import get_engine
from provisioner.models import Task
from provisioner.settings import Settings

# Mounted at the root (Prometheus convention, api/app.py PUBLIC_ROUTERS): the router itself requires a token.
router = APIRouter(tags=["metrics"], dependencies=[Depends(require_token)])


class _HostStates(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("prov_hosts", "Hosts per lifecycle state", labels=["state"])
        with Session(get_engine(self.settings)) as s:
            counts = crud.host_state_counts(s)
        for state in sorted(S.ALL):
            g.add_metric([state], counts.get(state, 0))
        yield g


class _Drift(Collector):
    """The controller's latest periodic drift check (conductor/drift_check.py), read at scrape time."""

    KINDS = ("deleted", "changed", "failed", "not-installed", "unconfigured", "guest-missing", "powered-off")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with Session(get_engine(self.settings)) as s:
            last = drift_check.last_result(s)
        g = GaugeMetricFamily("prov_drift_objects", "Objects drifted from the last applied inventory, per kind "
                              "(latest periodic check)", labels=["kind"])
        counts: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        for d in last["drift"]:
            counts[str(d.get("kind"))] = counts.get(str(d.get("kind")), 0) + 1
        for kind in sorted(counts):
            g.add_metric([kind], counts[kind])
        yield g
        ts = GaugeMetricFamily("prov_drift_last_check_timestamp_seconds",
                               "Unix time of the latest periodic drift check (0: none yet)")
        checked = last["checked_at"]
        ts.add_metric([], datetime.fromisoformat(checked).timestamp() if checked else 0.0)
        yield ts


class _TaskDurations:
    """Observes each finished task once, tracked by a finished_at watermark."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        self.settings = settings
        self.hist = Histogram("prov_task_duration_seconds", "Duration of finished tasks", ["kind", "status"],
                              registry=metrics.registry,
                              buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200))
        self.watermark: datetime | None = None
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def update(self, session: Session) -> None:
        with self.lock:
            q = select(Task).where(col(Task.finished_at).is_not(None), col(Task.started_at).is_not(None))
            if self.watermark is not None:
                q = q.where(col(Task.finished_at) >= self.watermark)
            for task in session.exec(q.order_by(col(Task.finished_at))).all():
                if task.id in self.seen or task.finished_at is None or task.started_at is None:
                    continue
                self.hist.labels(task.kind, task.status).observe(
                    max(0.0, (task.finished_at - task.started_at).total_seconds()))
                self.seen.add(task.id or 0)
                if self.watermark is None or task.finished_at > self.watermark:
                    # Rows finishing in the same instant as the watermark are caught by ``seen``.
                    self.watermark = task.finished_at
                    self.seen = {task.id or 0}


def dhcp_lease_file(settings: Settings) -> Path:
    """Where prov's dnsmasq keeps its leases (drivers/boot/dhcp.DhcpConfig.lease_file: the API
    cannot import the driver, and building a DhcpConfig would look up the interface's address)."""
    return settings.data_dir / "dnsmasq" / "leases"


_setup_lock = threading.Lock()  # two first scrapes at once must not register the collectors twice


def _collectors(request: Request) -> _TaskDurations:
    app = request.app
    durations: _TaskDurations | None = getattr(app.state, "task_durations", None)
    if durations is not None:
        return durations
    with _setup_lock:
        durations = getattr(app.state, "task_durations", None)
        if durations is not None:
            return durations
        metrics: Metrics = app.state.metrics
        metrics.registry.register(_HostStates(app.state.settings))
        metrics.registry.register(_Drift(app.state.settings))
        metrics.registry.register(prov_metrics.REGISTRY)
        metrics.registry.register(prov_metrics.DhcpLeases(dhcp_lease_file(app.state.settings)))
        durations = app.state.task_durations = _TaskDurations(metrics, app.state.settings)
        return durations


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request, session: SessionDep) -> Response:
    _collectors(request).update(session)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
