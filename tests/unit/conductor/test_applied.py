"""The controller checks recorded password fingerprints against the passwords it stores (conductor/applied.py).

What the client records is stamped on write only when it matches; on read a rewritten password
shows as the stored one's fingerprint (the recorded one kept when they differ, for drift); the
fingerprint of a host no apply recorded is the controller's to give. No response holds a password.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from provisioner import auth, migrate, secret_store
from provisioner.conductor import applied
from provisioner.db import get_engine
from provisioner.gitops.secrets import RECORDED, password_fingerprint
from provisioner.models import Host
from provisioner.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, drift_check_interval=0)
    migrate.upgrade(s)
    with Session(get_engine(s)) as db:
        db.add(Host(name="a1", bmc_kind="manual", bmc_password_enc=secret_store.encrypt("pw-one", s)))
        db.add(Host(name="b1", bmc_kind="manual", bmc_password_enc=secret_store.encrypt("pw-one", s)))
        db.add(Host(name="c1", bmc_kind="manual"))
        db.commit()
    yield s
    get_engine(s).dispose()


def fp(settings: Settings, pw: str) -> str:
    return password_fingerprint(pw, applied.salt(settings))


def set_password(settings: Settings, name: str, pw: str) -> None:
    with Session(get_engine(settings)) as db:
        h = db.exec(select(Host).where(Host.name == name)).one()
        h.bmc_password_enc = secret_store.encrypt(pw, settings)
        db.add(h)
        db.commit()


def test_stamp_keeps_only_fingerprints_of_the_stored_password(settings: Settings) -> None:
    with Session(get_engine(settings)) as db:
        out = applied.stamp(db, settings, {"host/a1": {"config": "c", "password": fp(settings, "pw-one")},
                                           "host/b1": {"password": fp(settings, "not-it")},
                                           "host/c1": {"password": fp(settings, "pw-one")}}, None)
    assert out["host/a1"]["password"] == fp(settings, "pw-one") and out["host/a1"][applied.STAMP]
    assert out["host/b1"] == {} and out["host/c1"] == {}  # wrong, or no password stored: never claimed


def test_current_follows_a_password_rewritten_by_hand(settings: Settings) -> None:
    with Session(get_engine(settings)) as db:
        rec = applied.stamp(db, settings, {"host/a1": {"password": fp(settings, "pw-one")}}, None)
        assert applied.current(db, settings, rec) == rec  # unchanged ciphertext: as recorded
    set_password(settings, "a1", "by-hand")
    with Session(get_engine(settings)) as db:
        now = applied.current(db, settings, rec)["host/a1"]
    assert now["password"] == fp(settings, "by-hand") and now[RECORDED] == fp(settings, "pw-one")
    set_password(settings, "a1", "pw-one")  # the same value again (a new ciphertext): no change
    with Session(get_engine(settings)) as db:
        again = applied.current(db, settings, rec)["host/a1"]
    assert again["password"] == fp(settings, "pw-one") and RECORDED not in again


def test_fingerprints_of_unrecorded_hosts(settings: Settings) -> None:
    with Session(get_engine(settings)) as db:
        got = applied.fingerprints(db, settings, ["a1", "c1", "nope"])
    assert got == {"a1": fp(settings, "pw-one"), "c1": None, "nope": None}


def test_routes_record_and_read_without_a_password(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from provisioner.api.app import create_app

    with Session(get_engine(settings)) as db:
        token = auth.create_token(db, name="applied-tests")
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        body = {"source": "t", "objects": ["host/a1"], "ok": False,
                "fingerprints": {"host/a1": {"password": fp(settings, "pw-one")}}}
        put = c.put("/api/v1/gitops/applied", json=body)
        assert put.status_code == 200, put.text
        assert put.json()["ok"] is False and put.json()["fingerprints"]["host/a1"]["password"]
        r = c.get("/api/v1/gitops/fingerprints", params={"host": ["a1", "b1", "c1"]})
        assert r.status_code == 200, r.text
        assert r.json()["fingerprints"] == {"a1": fp(settings, "pw-one"), "b1": fp(settings, "pw-one"), "c1": None}
        too_many = c.get("/api/v1/gitops/fingerprints", params={"host": [f"h{i}" for i in range(101)]})
        assert too_many.status_code == 422
        for resp in (put, r, c.get("/api/v1/gitops/applied")):
            assert "pw-one" not in json.dumps(resp.json())
