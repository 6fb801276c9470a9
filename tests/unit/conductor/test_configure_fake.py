"""The configure workflow over the fake configuration engine: what a run is given, and where each host ends up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, SQLModel, select

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import configure, engine
from provisioner.db import get_engine
from provisioner.drivers.config.base import HostResult, RunEvent, RunResult, RunSpec
from provisioner.drivers.config.fake import PUBLIC_KEY, FakeConfig
from provisioner.errors import ConfigRunError
from provisioner.models import Event, Host, Task
from provisioner.settings import Settings

ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyForTheConfigureTest0123456789ab ops@example"


@dataclass
class Env:
    settings: Settings
    fake: FakeConfig

    def submit(self, *names: str, **req: Any) -> Task:
        with Session(get_engine(self.settings), expire_on_commit=False) as s:
            hosts = [crud.get_host(s, n) for n in names]
            task = configure.submit(s, hosts, configure.ConfigureRequest(**req), actor="tester", settings=self.settings)
        assert task.id is not None
        engine.wait(task.id, timeout=30)
        return task

    def task(self, task_id: int | None) -> Task:
        with Session(get_engine(self.settings)) as s:
            row = s.get(Task, task_id)
            assert row is not None
            return row

    def host(self, name: str) -> Host:
        with Session(get_engine(self.settings)) as s:
            return crud.get_host(s, name)

    def history(self, name: str) -> list[Event]:
        with Session(get_engine(self.settings)) as s:
            hid = crud.get_host(s, name).id
            return list(s.exec(select(Event).where(Event.host_id == hid).order_by(Event.id)).all())  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    settings = Settings(data_dir=tmp_path, log_json=False)
    SQLModel.metadata.create_all(get_engine(settings))
    with Session(get_engine(settings)) as s:
        s.add_all([Host(name="a1", state=S.ACTIVE, ip_address="10.0.0.1"), Host(name="b1", state=S.AVAILABLE)])
        s.commit()
    fake = FakeConfig()
    monkeypatch.setattr(configure, "driver", fake)
    engine.stop()
    try:
        yield Env(settings, fake)
    finally:
        engine.stop()
        get_engine(settings).dispose()


def test_a_run_gets_the_inventory_keys_and_variables_and_every_host_ends_active(env: Env) -> None:
    env.fake.events = [RunEvent("task_start", "harden sshd"), RunEvent("changed", "harden sshd", host="a1"),
                       RunEvent("skipped", "harden sshd", host="b1")]
    task = env.submit("a1", "b1", playbooks=["harden"], engine="podman", vars={"hardening_banner": False},
                      admin_keys=[ADMIN_KEY])
    assert env.task(task.id).status == S.TASK_SUCCEEDED
    (spec,) = env.fake.runs
    assert spec.playbooks == ["harden"] and spec.run_vars == {"hardening_banner": False}
    assert sorted(spec.inventory["_meta"]["hostvars"]) == ["a1", "b1"]
    assert spec.inventory["_meta"]["hostvars"]["a1"]["ansible_host"] == "10.0.0.1"
    assert spec.prov["engine"] == "podman" and spec.prov["task_id"] == task.id
    assert spec.prov["admin_keys"] == [PUBLIC_KEY, ADMIN_KEY]  # the controller's own key first
    assert spec.label == f"task{task.id}" and not spec.check
    assert [env.host(n).state for n in ("a1", "b1")] == [S.ACTIVE, S.ACTIVE]
    lines = [e.message for e in env.history("a1")]
    assert "ansible: changed: harden sshd" in lines and lines[-1] == "configured (ok=1 changed=0)"
    assert not any(e.event == "ansible-skipped" for e in env.history("b1"))  # skips are not history


def test_a_failed_host_fails_the_run_and_every_host_says_which_task(env: Env) -> None:
    def result(spec: RunSpec) -> RunResult:
        return RunResult(status="failed", rc=2, artifact_dir="/runs/x", duration=1.0,
                         hosts={"a1": HostResult(ok=3),
                                "b1": HostResult(ok=1, failed=1, failed_task="install docker", message="no repo")},
                         failures=[{"host": "b1", "task": "install docker", "status": "failed", "message": "no repo"}])

    env.fake.result = result
    task = env.submit("a1", "b1")
    row = env.task(task.id)
    why = "host b1: task 'install docker' failed: no repo"
    assert row.status == S.TASK_FAILED and why in (row.error or "")
    assert [env.host(n).state for n in ("a1", "b1")] == [S.CONFIGURE_FAILED, S.CONFIGURE_FAILED]
    assert env.history("b1")[-1].message == "configure failed on b1: task 'install docker' failed: no repo"
    assert env.history("a1")[-1].message == f"configure failed: {why}"  # the run failed, so a1 is not done


def test_an_engine_that_cannot_start_fails_every_host_before_any_task(env: Env) -> None:
    env.fake.error = ConfigRunError(reason="ansible-playbook is not installed")
    task = env.submit("a1", "b1")
    assert env.task(task.id).status == S.TASK_FAILED
    for name in ("a1", "b1"):
        assert env.host(name).state == S.CONFIGURE_FAILED
        assert env.history(name)[-1].message.startswith("configure failed before any task ran: ")


def test_a_timed_out_run_says_so(env: Env) -> None:
    env.fake.result = RunResult(status="timeout", rc=-1, hosts={}, artifact_dir="", failures=[], duration=9.0)
    env.submit("a1")
    assert env.host("a1").state == S.CONFIGURE_FAILED
    assert env.history("a1")[-1].message.startswith("configure timed out after ")


def test_a_cancelled_run_aborts_its_hosts(env: Env) -> None:
    class CancelledAtStart(FakeConfig):
        def run(self, spec: RunSpec, settings: Settings, **kw: Any) -> RunResult:
            engine.cancel(int(spec.label.removeprefix("task")))  # the operator, mid-run
            return super().run(spec, settings, **kw)

    fake = CancelledAtStart(events=[RunEvent("task_start", "never reported")])
    configure.driver = fake  # the fixture's monkeypatch puts the original back
    task = env.submit("a1")
    assert env.task(task.id).status == S.TASK_CANCELLED
    assert env.host("a1").state == S.CONFIGURE_FAILED
    assert env.history("a1")[-1].message == "configure cancelled by operator"
    assert len(fake.runs) == 1
