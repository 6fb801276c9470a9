"""configure.submit checks everything before any host moves."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, SQLModel

from provisioner import states as S
from provisioner.conductor import configure
from provisioner.db import get_engine
from provisioner.errors import InvalidInput, InvalidTransition
from provisioner.models import Event, Host
from provisioner.settings import Settings


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Session]:
    settings = Settings(data_dir=tmp_path, log_json=False)
    SQLModel.metadata.create_all(get_engine(settings))
    session = Session(get_engine(settings), expire_on_commit=False)
    session.add_all([Host(name="a1", state=S.ACTIVE), Host(name="e1", state=S.ENROLLED)])
    session.commit()
    return settings, session


def _hosts(session: Session, *names: str) -> list[Host]:
    from provisioner import crud

    return [crud.get_host(session, n) for n in names]


@pytest.mark.parametrize("req", [
    configure.ConfigureRequest(playbooks=["nope"]),
    configure.ConfigureRequest(engine="rkt"),
    configure.ConfigureRequest(vars={"ansible_user": "root"}),
    configure.ConfigureRequest(admin_keys=["not a key"]),
])
def test_bad_request_moves_nothing(env: tuple[Settings, Session], req: configure.ConfigureRequest) -> None:
    settings, session = env
    with pytest.raises(InvalidInput):
        configure.submit(session, _hosts(session, "a1"), req, settings=settings)
    assert _hosts(session, "a1")[0].state == S.ACTIVE
    assert session.exec(__import__("sqlmodel").select(Event)).all() == []


def test_one_host_in_a_wrong_state_stops_the_whole_request(env: tuple[Settings, Session]) -> None:
    settings, session = env
    with pytest.raises(InvalidTransition) as exc:
        configure.submit(session, _hosts(session, "a1", "e1"), configure.ConfigureRequest(), settings=settings)
    assert "e1" in exc.value.message and exc.value.http_status == 409
    assert [h.state for h in _hosts(session, "a1", "e1")] == [S.ACTIVE, S.ENROLLED]
