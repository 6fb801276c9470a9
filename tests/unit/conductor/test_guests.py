"""conductor/guests.py against the in-memory hypervisor: checks before a task, then create/delete tasks.

Fast and libvirt-free: the KVM hosts are ``fake://`` URIs (drivers/virt/fake.py); the task
runner is the real one, on a private SQLite database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, SQLModel, col, select

from provisioner import states as S
from provisioner.conductor import engine, guests
from provisioner.conductor.tasks import TaskCancelled, TaskContext
from provisioner.db import get_engine
from provisioner.drivers.virt import fake
from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.base import CREATE_STEPS, STEP_DEFINE, STEP_SEED, STEP_START, STEP_VOLUMES
from provisioner.drivers.virt.spec import GuestSpec
from provisioner.errors import Conflict, NotFound, VirtRefused
from provisioner.models import Event, Host, Task
from provisioner.settings import Settings

TREES = Path(__file__).resolve().parents[2] / "support" / "virt_trees"
KVM1 = "fake:///kvm1"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    fake.reset()
    engine.stop()
    st = Settings(data_dir=tmp_path, log_json=False, virt_uri=f"fake:///local-{uuid.uuid4().hex[:6]}",
                  virt_pool="prov", virt_network="prov-nat", virt_pool_dir=str(tmp_path / "pool"))
    SQLModel.metadata.create_all(get_engine(st))
    with Session(get_engine(st)) as s:
        s.add(Host(name="kvm1", ip_address="10.0.0.5", bmc_kind="manual", bmc_options={"virt_uri": KVM1}))
        s.commit()
    engine.start(st)
    yield st
    engine.stop()
    fake.reset()


def spec(name: str = "g1", **kw: Any) -> GuestSpec:
    body: dict[str, Any] = {"name": name, "memory_mib": 256, "virt_type": "qemu", "disks": [{"size_gib": 1}],
                            "nics": [{"mac": "52:54:00:aa:00:01"}], **kw}
    return GuestSpec.parse(body)


def finished(settings: Settings, task: Task) -> Task:
    assert task.id is not None
    engine.wait(task.id, timeout=30)
    with Session(get_engine(settings)) as s:
        row = s.get(Task, task.id)
        assert row is not None
        return row


def history(settings: Settings) -> list[tuple[str, str, str]]:
    with Session(get_engine(settings)) as s:
        return [(e.event, e.message, e.actor) for e in s.exec(select(Event).order_by(col(Event.id))).all()]


def tasks(settings: Settings) -> list[Task]:
    with Session(get_engine(settings)) as s:
        return list(s.exec(select(Task)).all())


def test_dry_run_plans_and_makes_nothing(settings: Settings) -> None:
    out = guests.plan(settings, "kvm1", spec(seed={"user_data": "#cloud-config\n"}))
    assert out["dry_run"] is True and out["verdict"] == pf.HARDWARE_KVM and "<name>g1</name>" in out["xml"]
    # the controller's network and pool do not exist on the host yet: made on demand
    assert out["create_networks"] == ["prov-nat"] and out["create_pools"] == ["prov"]
    assert out["seed_volume"]["name"] == "g1-seed.iso"
    assert fake.fake_host(KVM1).guests == {} and fake.fake_host(KVM1).calls == [] and tasks(settings) == []


@pytest.mark.parametrize(("body", "exc", "text"), [
    ({"virt_type": "kvm"}, VirtRefused, "virt_type kvm refused"),
    ({"memory_mib": 10**6}, VirtRefused, "free memory"),
    ({"nics": [{"network": "nope"}]}, VirtRefused, "unknown network 'nope'"),
    ({"disks": [{"size_gib": 1, "pool": "nope"}]}, VirtRefused, "unknown storage pool 'nope'"),
])
def test_a_failing_check_is_raised_before_any_task(settings: Settings, body: dict[str, Any],
                                                  exc: type[Exception], text: str) -> None:
    fake.fake_host(KVM1).report = pf.evaluate(pf.collect_facts(TREES / "software_kvm_pvm"), {"domain_types": ["qemu"]})
    with pytest.raises(exc, match=text):
        guests.submit_create(settings, "kvm1", spec(**body))
    assert tasks(settings) == [] and fake.fake_host(KVM1).guests == {}


def test_create_is_a_task_with_steps_progress_and_history(settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_engine(settings)
    held: list[int] = []
    real_create = fake.FakeVirt.create_guest

    def create(self: fake.FakeVirt, *a: Any, **kw: Any) -> dict[str, Any]:
        held.append(engine.pool.checkedout())  # type: ignore[attr-defined]
        return real_create(self, *a, **kw)

    monkeypatch.setattr(fake.FakeVirt, "create_guest", create)
    steps: list[str] = []
    real_progress = TaskContext.progress

    def progress(self: TaskContext, pct: int | None = None, step: str | None = None, **kw: Any) -> None:
        if step:
            steps.append(step)
        real_progress(self, pct, step=step, **kw)

    monkeypatch.setattr(TaskContext, "progress", progress)
    task = guests.submit_create(settings, "kvm1", spec(seed={"user_data": "#cloud-config\npassword: s3cret\n"}),
                                actor="token:ops")
    assert task.kind == guests.KIND_CREATE and task.host_id is not None and task.status == S.TASK_PENDING
    # the seed's user-data is not persisted (it may hold credentials); the verdict is
    assert "s3cret" not in str(task.params) and task.params["spec"]["seed"] is True
    assert task.params["verdict"] == pf.HARDWARE_KVM
    row = finished(settings, task)
    assert row.status == S.TASK_SUCCEEDED, row.error
    assert row.progress == 100 and row.result["state"] == "running" and row.result["dry_run"] is False
    assert row.result["nics"][0]["mac"] == "52:54:00:aa:00:01" and row.result["nics"][0]["ip"]
    assert steps == ["connecting", *CREATE_STEPS]
    assert held == [0], "no database connection is held while the hypervisor works"
    host = fake.fake_host(KVM1)
    assert [c.split()[0] for c in host.calls] == ["networks", "volumes", "seed", "define", "start"]
    assert host.guests["g1"]["state"] == "running" and "prov-nat" in host.networks and "prov" in host.pools
    lines = history(settings)
    assert [e for e, _m, _a in lines] == ["guest-create", "guest-created"]
    assert all("guest g1" in m for _e, m, _a in lines) and lines[0][2] == "token:ops"
    assert "KVM host kvm1" in lines[1][1] and "52:54:00:aa:00:01=" in lines[1][1]


def test_no_start_and_no_seed_skip_those_steps(settings: Settings) -> None:
    row = finished(settings, guests.submit_create(settings, "kvm1", spec(), start=False))
    assert row.status == S.TASK_SUCCEEDED and row.result["state"] == "shutoff"
    assert [c.split()[0] for c in fake.fake_host(KVM1).calls] == ["networks", "volumes", "define"]


@pytest.mark.parametrize("step", [STEP_VOLUMES, STEP_SEED, STEP_DEFINE, STEP_START])
def test_a_failing_step_fails_the_task_and_leaves_nothing(settings: Settings, step: str) -> None:
    host = fake.fake_host(KVM1)
    host.fail_at = step
    row = finished(settings, guests.submit_create(settings, "kvm1", spec(seed={"user_data": "#cloud-config\n"})))
    assert row.status == S.TASK_FAILED and f"{step} of g1: injected failure" in (row.error or "")
    assert row.result["error"]["error"] == "virt_error"  # the code survives for the CLI's exit code
    assert host.guests == {} and host.volumes == {} and not any(host.reservations.values())
    assert [e for e, _m, _a in history(settings)] == ["guest-create", "guest-create-failed"]


def _ctx(settings: Settings, kind: str, params: dict[str, Any], cls: type[TaskContext] = TaskContext,
         private: dict[str, Any] | None = None) -> TaskContext:
    """A task row and its context, to run a task body in the test's own thread."""
    with Session(get_engine(settings)) as s:
        host_id = s.exec(select(Host)).one().id
        task = Task(kind=kind, host_id=host_id, params=params, owner="test")
        s.add(task)
        s.commit()
        s.refresh(task)
    assert task.id is not None
    return cls(task.id, kind, host_id, None, params, settings, owner="test", private=private or {})


def _create_private(**kw: Any) -> dict[str, Any]:
    """What guests.submit_create hands the task privately: the whole spec and the verdict."""
    return {"spec": spec(**kw).model_dump(mode="json"), "report": fake.hardware_report().to_dict()}


def test_the_task_checks_again(settings: Settings) -> None:
    """A guest of the same name made between the request and the task: the task fails and makes nothing."""
    ctx = _ctx(settings, guests.KIND_CREATE, {"host": "kvm1", "uri": KVM1, "actor": "t"},
               private=_create_private())
    with fake.open_fake(KVM1) as conn:
        conn.create_guest(spec(nics=[{"mac": "52:54:00:aa:00:02"}]))
    with pytest.raises(Conflict, match="already exists"):
        guests.run_create(ctx)
    assert fake.fake_host(KVM1).calls == ["networks and pools g1", "volumes g1", "define domain g1", "start g1"]
    assert [e for e, _m, _a in history(settings)] == ["guest-create", "guest-create-failed"]
    with pytest.raises(Conflict, match="MAC 52:54:00:aa:00:02 is already used"):
        guests.submit_create(settings, "kvm1", spec("g2", nics=[{"mac": "52:54:00:aa:00:02"}]))


def test_cancel_mid_create_rolls_back(settings: Settings) -> None:
    class CancelAtDefine(TaskContext):
        def progress(self, pct: int | None = None, step: str | None = None,
                     result: dict[str, Any] | None = None) -> None:
            if step == STEP_DEFINE:
                self.cancel_event.set()
            super().progress(pct, step, result)

    ctx = _ctx(settings, guests.KIND_CREATE, {"host": "kvm1", "uri": KVM1, "actor": "t"}, CancelAtDefine,
               private=_create_private())
    with pytest.raises(TaskCancelled):
        guests.run_create(ctx)
    h = fake.fake_host(KVM1)
    assert h.guests == {} and h.volumes == {} and "define domain g1" not in h.calls
    assert [e for e, _m, _a in history(settings)] == ["guest-create", "guest-create-cancelled"]


def test_delete_is_a_task(settings: Settings) -> None:
    assert finished(settings, guests.submit_create(settings, "kvm1", spec())).status == S.TASK_SUCCEEDED
    with pytest.raises(NotFound):
        guests.submit_delete(settings, "kvm1", "nope")
    task = guests.submit_delete(settings, "kvm1", "g1", actor="token:ops")
    assert task.kind == guests.KIND_DELETE and task.params["guest"] == "g1"
    row = finished(settings, task)
    assert row.status == S.TASK_SUCCEEDED
    assert row.result["reservations_released"] == ["52:54:00:aa:00:01"] and len(row.result["volumes_deleted"]) == 1
    assert fake.fake_host(KVM1).guests == {}
    events = [(e, a) for e, _m, a in history(settings)]
    assert events[-2:] == [("guest-delete", "token:ops"), ("guest-deleted", "conductor")]


def test_delete_keeping_volumes(settings: Settings) -> None:
    finished(settings, guests.submit_create(settings, "kvm1", spec()))
    row = finished(settings, guests.submit_delete(settings, "kvm1", "g1", volumes=False))
    assert row.result["volumes_deleted"] == [] and len(fake.fake_host(KVM1).volumes) == 1
    assert "volumes kept" in history(settings)[-2][1]


def test_local_guests_have_tasks_but_no_history(settings: Settings) -> None:
    row = finished(settings, guests.submit_create(settings, "local", spec()))
    assert row.status == S.TASK_SUCCEEDED and row.host_id is None and row.params["host"] == "local"
    assert fake.fake_host(settings.virt_uri).guests.keys() == {"g1"} and fake.fake_host(KVM1).guests == {}
    assert history(settings) == []


def test_history_is_skipped_when_the_kvm_host_is_deleted_meanwhile(settings: Settings) -> None:
    ctx = _ctx(settings, guests.KIND_DELETE, {"host": "kvm1", "uri": KVM1, "guest": "g1", "actor": "t"})
    with Session(get_engine(settings)) as s:
        s.delete(s.exec(select(Host)).one())
        s.commit()
    guests._history(ctx, "guest g1: deleted", event="guest-deleted")  # no foreign-key error, no line
    assert history(settings) == []


def test_quick_calls(settings: Settings) -> None:
    finished(settings, guests.submit_create(settings, "kvm1", spec()))
    fake.fake_host(KVM1).console["g1"] = [f"line {i}" for i in range(10)]
    assert [g["name"] for g in guests.list_guests(settings, "kvm1")] == ["g1"]
    assert guests.show(settings, "kvm1", "g1")["memory_mib"] == 256
    assert guests.stop(settings, "kvm1", "g1", timeout=1) == {"name": "g1", "stopped": "shutdown", "state": "shutoff"}
    assert guests.stop(settings, "kvm1", "g1")["stopped"] == "already-off"
    assert guests.start(settings, "kvm1", "g1") == {"name": "g1", "state": "running"}
    assert guests.reboot(settings, "kvm1", "g1")["state"] == "running"
    assert guests.stop(settings, "kvm1", "g1", force=True)["stopped"] == "destroyed"
    assert guests.console_tail(settings, "kvm1", "g1", 3)["lines"] == ["line 7", "line 8", "line 9"]
    assert guests.console_tail(settings, "kvm1", "g1", 0)["lines"] == ["line 9"]  # at least one line
    with pytest.raises(NotFound):
        guests.show(settings, "kvm1", "nope")
    with pytest.raises(NotFound):
        guests.list_guests(settings, "no-such-host")
