from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, select

from provisioner import crud, lifecycle, migrate
from provisioner import states as S
from provisioner.conductor import engine, timeouts
from provisioner.db import get_engine
from provisioner.models import Event, Host, utcnow
from provisioner.settings import Settings


def _setup(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        for name in ("late", "fine", "stable"):
            s.add(Host(name=name))
        s.commit()
        for name in ("late", "fine"):
            lifecycle.advance(s, crud.get_host(s, name), S.VERIFY, settings=settings)
        late = crud.get_host(s, "late")
        late.state_deadline = utcnow() - timedelta(seconds=5)
        s.add(late)
        s.commit()
    return settings


def test_check_once_fires_timeout_with_message(tmp_path: Path) -> None:
    settings = _setup(tmp_path)
    assert timeouts.check_once(settings) == ["late"]
    with Session(get_engine(settings)) as s:
        assert crud.get_host(s, "late").state == S.VERIFY_FAILED
        assert crud.get_host(s, "fine").state == S.VERIFYING
        assert crud.get_host(s, "stable").state == S.ENROLLED
        ev = s.exec(select(Event).where(Event.event == S.TIMEOUT)).one()
        assert ev.actor == timeouts.ACTOR and "timed out in verifying" in ev.message
        assert crud.get_host(s, "late").last_error == ev.message
    assert timeouts.check_once(settings) == []  # nothing left to time out
    get_engine(settings).dispose()


def test_timeouts_run_as_a_scheduled_workflow_on_sqlite(tmp_path: Path) -> None:
    """The conductor's periodic jobs are DBOS schedules (engine/schedules.py); on SQLite too."""
    settings = _setup(tmp_path).model_copy(update={"timeout_check_interval": 1.0, "power_sync_enabled": False,
                                                   "drift_check_interval": 0.0, "engine_poll_s": 0.05})
    engine.stop()
    engine.start(settings, executor="t:1")
    try:
        assert engine.apply_schedules(settings) == {"prov-power-sync": None, "prov-timeouts": "* * * * * *",
                                                    "prov-drift-check": None}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with Session(get_engine(settings)) as s:
                if crud.get_host(s, "late").state == S.VERIFY_FAILED:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the scheduled timeout check did not fire")
    finally:
        engine.stop()
    get_engine(settings).dispose()
