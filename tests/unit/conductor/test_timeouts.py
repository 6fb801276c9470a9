from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, select

from provisioner import crud, lifecycle, migrate
from provisioner import states as S
from provisioner.conductor import timeouts
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


def test_periodic_start_stop(tmp_path: Path) -> None:
    settings = _setup(tmp_path)
    stop = timeouts.start(settings, interval=0.05)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with Session(get_engine(settings)) as s:
                if crud.get_host(s, "late").state == S.VERIFY_FAILED:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("timeout checker did not fire")
    finally:
        stop()
    get_engine(settings).dispose()
