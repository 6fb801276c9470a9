# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""Installer reports: history, task result, done -> booting with netboot off, error -> install-failed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlmodel import select

from provisioner import states as S
from provisioner.conductor import install_callbacks as cb
from provisioner.conductor import install_tokens
from provisioner.errors import Conflict, Forbidden
from provisioner.models import Event, Host, Task
from tests.support.install import add_host, db, settings, snapshot  # noqa: F401


def _events(db, host_id):
    db.expire_all()
    return list(db.exec(select(Event).where(Event.host_id == host_id).order_by(Event.id)).all())


def test_start_and_progress_write_history_and_task_result(db, settings):
    host = add_host(db)
    task = Task(kind="install", host_id=host.id, status=S.TASK_RUNNING, step="wait-callbacks", progress=40)
    db.add(task)
    db.commit()
    cb.handle(db, host, cb.InstallEvent("start", "kickstart %pre"), settings)
    cb.handle(db, host, cb.InstallEvent("progress", "packages", progress=60), settings)
    evs = _events(db, host.id)
    assert [e.event for e in evs] == ["install-start", "install-progress"]
    assert evs[1].message == "packages (60%)" and evs[1].task_id == task.id
    db.refresh(task)
    assert task.step == "wait-callbacks" and task.progress == 40  # the workflow's own fields stay
    assert task.result["installer"]["event"] == "progress"
    assert task.result["installer"]["progress"] == 60
    db.refresh(host)
    assert host.state == S.INSTALL_WAIT


def test_done_revokes_token_turns_netboot_off_and_moves_to_booting(db, settings):
    host = add_host(db)
    token = install_tokens.mint(db, host, settings)
    cb.handle(db, host, cb.InstallEvent("done", "late-commands"), settings)
    db.expire_all()
    host = db.get(Host, host.id)
    assert host.state == S.BOOTING
    assert host.netboot is False
    assert host.install_token_hash is None and host.install_token_expires is None
    assert host.installed_at is not None
    with pytest.raises(Forbidden):
        install_tokens.verify(db, token)
    last = _events(db, host.id)[-1]
    assert (last.from_state, last.to_state, last.event) == (S.INSTALL_WAIT, S.BOOTING, S.DONE)


def test_error_moves_to_install_failed_with_the_message(db, settings):
    host = add_host(db)
    install_tokens.mint(db, host, settings)
    cb.handle(db, host, cb.InstallEvent("error", "disk full"), settings)
    db.expire_all()
    host = db.get(Host, host.id)
    assert host.state == S.INSTALL_FAILED
    assert "disk full" in (host.last_error or "")
    assert host.install_token_hash is None


@pytest.mark.parametrize("event", ["start", "progress", "done", "error"])
@pytest.mark.parametrize("state", [S.ACTIVE, S.BOOTING, S.AVAILABLE, S.INSTALL_FAILED])
def test_reports_outside_an_install_are_conflicts_and_change_nothing(db, settings, event, state):
    host = add_host(db, state=state)
    before = snapshot(db)
    with pytest.raises(Conflict) as exc:
        cb.handle(db, host, cb.InstallEvent(event), settings)
    assert exc.value.http_status == 409
    assert snapshot(db) == before


def test_done_while_still_installing_is_a_conflict(db, settings):
    host = add_host(db, state=S.INSTALLING)
    with pytest.raises(Conflict):
        cb.handle(db, host, cb.InstallEvent("done"), settings)
    cb.handle(db, host, cb.InstallEvent("start"), settings)  # start may race the workflow's "wait" step


class _FakePower:
    def __init__(self) -> None:
        self.fail = False
        self.calls: list[dict] = []

    def set_boot_device(self, host_id, device, persistent=False, settings=None):
        self.calls.append({"host_id": host_id, "device": str(device), "persistent": persistent})
        if self.fail:
            raise RuntimeError("BMC said no")


@pytest.fixture
def fake_power(monkeypatch):
    fake = _FakePower()
    monkeypatch.setattr("provisioner.conductor.power.set_boot_device", fake.set_boot_device)
    return fake, fake.calls


@pytest.fixture
def fake_dhcp(monkeypatch, settings):
    calls: list[bool] = []

    def notify_hosts_changed():
        # called after the commit: the DHCP sync must already see netboot off
        from provisioner.db import session_scope

        with session_scope(settings) as s:
            calls.append(all(not h.netboot for h in s.exec(select(Host)).all()))

    monkeypatch.setattr("provisioner.conductor.install_callbacks.notify_hosts_changed", notify_hosts_changed)
    return calls


def test_done_syncs_dhcp_and_sets_disk_boot_in_background(db, settings, fake_power, fake_dhcp, monkeypatch):
    _mod, calls = fake_power
    submitted = []

    def submit(kind, **kw):
        submitted.append((kind, kw))
        return cb.run_boot_device(SimpleNamespace(host_id=kw["host_id"], settings=kw["settings"]))

    monkeypatch.setattr("provisioner.conductor.engine.submit", submit)
    host = add_host(db)
    cb.handle(db, host, cb.InstallEvent("done"), settings)
    assert fake_dhcp == [True]
    assert submitted and submitted[0][0] == "boot-device"
    assert calls == [{"host_id": host.id, "device": "disk", "persistent": True}]
    assert _events(db, host.id)[-1].event == "boot-device"


def test_failures_after_done_are_recorded_not_raised(db, settings, fake_power, monkeypatch):
    mod, _calls = fake_power
    mod.fail = True
    def notify_hosts_changed():
        raise OSError("dnsmasq reload failed")

    monkeypatch.setattr("provisioner.conductor.install_callbacks.notify_hosts_changed", notify_hosts_changed)

    def submit(kind, **kw):
        return cb.run_boot_device(SimpleNamespace(host_id=kw["host_id"], settings=kw["settings"]))

    monkeypatch.setattr("provisioner.conductor.engine.submit", submit)
    host = add_host(db)
    cb.handle(db, host, cb.InstallEvent("done"), settings)
    db.expire_all()
    assert db.get(Host, host.id).state == S.BOOTING
    kinds = [e.event for e in _events(db, host.id)]
    assert "dhcp-sync-failed" in kinds and "boot-device-failed" in kinds
    msg = next(e.message for e in _events(db, host.id) if e.event == "boot-device-failed")
    assert "BMC said no" in msg
