"""Periodic jobs as DBOS schedules (conductor/engine/schedules.py): intervals as cron expressions."""

from __future__ import annotations

import pytest

from provisioner.conductor.engine.schedules import JOBS, cron_for


@pytest.mark.parametrize(("interval", "cron", "real"), [
    (0.5, "* * * * * *", 1.0),
    (1, "* * * * * *", 1.0),
    (30, "*/30 * * * * *", 30.0),
    (45, "*/30 * * * * *", 30.0),  # rounded down to a divisor of 60
    (60, "0 * * * * *", 60.0),
    (300, "0 */5 * * * *", 300.0),
    (7200, "0 0 */2 * * *", 7200.0),
])
def test_cron_for(interval: float, cron: str, real: float) -> None:
    assert cron_for(interval) == (cron, real)


def test_each_job_has_its_own_schedule_and_queue() -> None:
    assert sorted(j.schedule for j in JOBS.values()) == ["prov-drift-check", "prov-power-sync", "prov-timeouts"]
    assert len({j.queue for j in JOBS.values()}) == 3
