"""The install workflow's own logic, with a fake BMC driver (the real BMCs are tested in
tests/integration/power and the whole chain in tests/e2e)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from provisioner import migrate
from provisioner import states as S
from provisioner.conductor import engine, install, install_callbacks, power, timeouts
from provisioner.db import get_engine
from provisioner.drivers.power.base import BootSetting, PowerAction, PowerInterface, PowerState
from provisioner.errors import Conflict, InvalidInput
from provisioner.models import Event, Host, Nic, Profile, Rack, Task, utcnow
from provisioner.settings import Settings
from tests.support.helpers import banner_sshd


class FakeBmc(PowerInterface):
    calls: list[str] = []
    power = PowerState.OFF

    def validate(self) -> None:
        pass

    def get_power_state(self) -> PowerState:
        return FakeBmc.power

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        FakeBmc.calls.append(f"power {action.value}")
        FakeBmc.power = PowerState.OFF if action in (PowerAction.OFF, PowerAction.SOFT_OFF) else PowerState.ON

    def set_boot_device(self, setting: BootSetting) -> None:
        FakeBmc.calls.append(f"bootdev {setting.device.value}{' persistent' if setting.persistent else ''}")

    def get_boot_device(self) -> BootSetting | None:
        return None


@pytest.fixture
def ssh_port() -> Iterator[int]:
    """Something that answers like sshd (banner only): enough for the wait-for-SSH step."""
    with banner_sshd() as port:
        yield port


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(data_dir=tmp_path, power_sync_enabled=False, tftp_enabled=False)
    s.ensure_dirs()
    migrate.upgrade(s)
    FakeBmc.calls = []
    FakeBmc.power = PowerState.ON
    svc = power.get_service(s)
    svc.driver_factory = FakeBmc
    svc.confirm_interval = 0.01
    install.POLL = 0.05
    yield s
    engine.stop()
    power.reset_services()


def make_host(settings: Settings, ssh_port: int, name: str = "node1") -> int:
    with Session(get_engine(settings)) as s:
        rack = Rack(name="r1")
        prof = Profile(name="img", install_method="image", image_url="http://127.0.0.1/img.raw",
                       image_checksum="sha256:" + "0" * 64, params={"ssh_port": ssh_port, "image_size": 1 << 20})
        # validate() checks the deploy ramdisk is in the boot root
        for f in ("prov/vmlinuz", "prov/initrd.img"):
            (settings.boot_dir / f).parent.mkdir(parents=True, exist_ok=True)
            (settings.boot_dir / f).write_bytes(b"x")
        s.add(rack)
        s.add(prof)
        s.flush()
        h = Host(name=name, rack_id=rack.id, profile_id=prof.id, state=S.AVAILABLE, bmc_kind="ipmi",
                 bmc_address="127.0.0.1", bmc_port=6230, bmc_username="admin")
        s.add(h)
        s.flush()
        s.add(Nic(host_id=h.id, mac="52:54:00:00:00:01", boot=True, ip="127.0.0.1"))
        s.commit()
        assert h.id is not None
        return h.id


def wait_for(settings: Settings, host_id: int, state: str, timeout: float = 20) -> Host:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(get_engine(settings)) as s:
            h = s.get(Host, host_id)
            assert h is not None
            if h.state == state:
                return h
        time.sleep(0.05)
    raise AssertionError(f"host never reached {state} (is {h.state}: {h.last_error})")


def installer_says(settings: Settings, host_id: int, event: str, message: str = "") -> None:
    with Session(get_engine(settings), expire_on_commit=False) as s:
        h = s.get(Host, host_id)
        assert h is not None
        install_callbacks.handle(s, h, install_callbacks.InstallEvent(event, message), settings)  # type: ignore[arg-type]


def task_of(settings: Settings, task_id: int, timeout: float = 20) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(get_engine(settings)) as s:
            t = s.get(Task, task_id)
            if t is not None and t.status in S.TASK_DONE:
                return t
        time.sleep(0.05)
    raise AssertionError("task did not finish")


def test_install_walks_every_step_to_active(settings: Settings, ssh_port: int) -> None:
    hid = make_host(settings, ssh_port)
    with Session(get_engine(settings), expire_on_commit=False) as s:
        task = install.start(s, "node1", install.InstallRequest(), settings=settings)
    h = wait_for(settings, hid, S.INSTALL_WAIT)
    assert h.netboot is True and h.install_token_hash
    assert FakeBmc.calls == ["power off", "bootdev pxe", "power on"]
    installer_says(settings, hid, "done", "image written")
    t = task_of(settings, task.id or 0)
    assert t.status == S.TASK_SUCCEEDED, t.error
    h = wait_for(settings, hid, S.ACTIVE)
    assert h.netboot is False and h.install_token_hash is None and h.installed_at is not None
    assert "bootdev disk persistent" in FakeBmc.calls


def test_second_install_request_gets_409(settings: Settings, ssh_port: int) -> None:
    make_host(settings, ssh_port)
    with Session(get_engine(settings), expire_on_commit=False) as s:
        install.start(s, "node1", install.InstallRequest(), settings=settings)
    with Session(get_engine(settings), expire_on_commit=False) as s, pytest.raises(Conflict) as ei:
        install.start(s, "node1", install.InstallRequest(), settings=settings)
    assert ei.value.http_status == 409


def test_validation_fails_before_anything_changes(settings: Settings, ssh_port: int) -> None:
    hid = make_host(settings, ssh_port)
    with Session(get_engine(settings)) as s:
        nic = s.get(Nic, 1)
        assert nic is not None
        nic.ip = None
        s.add(nic)
        s.commit()
    with Session(get_engine(settings), expire_on_commit=False) as s, pytest.raises(InvalidInput, match="no address"):
        install.start(s, "node1", install.InstallRequest(), settings=settings)
    with Session(get_engine(settings)) as s:
        h = s.get(Host, hid)
        assert h is not None and h.state == S.AVAILABLE and not h.netboot
    assert FakeBmc.calls == []


def test_installer_error_fails_the_install_and_retry_works(settings: Settings, ssh_port: int) -> None:
    hid = make_host(settings, ssh_port)
    with Session(get_engine(settings), expire_on_commit=False) as s:
        task = install.start(s, "node1", install.InstallRequest(), settings=settings)
    wait_for(settings, hid, S.INSTALL_WAIT)
    installer_says(settings, hid, "error", "disk /dev/vda not found")
    t = task_of(settings, task.id or 0)
    assert t.status == S.TASK_FAILED and "disk /dev/vda not found" in (t.error or "")
    h = wait_for(settings, hid, S.INSTALL_FAILED)  # the task cleans up before it ends
    assert h.netboot is False and h.install_token_hash is None
    with Session(get_engine(settings), expire_on_commit=False) as s:
        task2 = install.retry(s, "node1", settings=settings)
    wait_for(settings, hid, S.INSTALL_WAIT)
    installer_says(settings, hid, "done")
    assert task_of(settings, task2.id or 0).status == S.TASK_SUCCEEDED


def test_callback_that_never_comes_times_out(settings: Settings, ssh_port: int) -> None:
    hid = make_host(settings, ssh_port)
    with Session(get_engine(settings), expire_on_commit=False) as s:
        task = install.start(s, "node1", install.InstallRequest(), settings=settings)
    wait_for(settings, hid, S.INSTALL_WAIT)
    with Session(get_engine(settings)) as s:
        h = s.get(Host, hid)
        assert h is not None
        h.state_deadline = utcnow() - timedelta(seconds=1)
        s.add(h)
        s.commit()
    timeouts.check_once(settings)
    t = task_of(settings, task.id or 0)
    assert t.status == S.TASK_FAILED
    h = wait_for(settings, hid, S.INSTALL_FAILED)
    assert h.netboot is False and h.install_token_hash is None


def test_killed_controller_resumes_the_step_it_was_in(settings: Settings, ssh_port: int) -> None:
    """A conductor stops in wait-installer; a second one (another executor id) starts on the same
    data: it takes the install over (SQLite: at start), resumes in wait-installer, and the first
    one's loop, still polling in this process, is fenced off the task row."""
    hid = make_host(settings, ssh_port)
    engine.start(settings, executor="dead:1")
    with Session(get_engine(settings), expire_on_commit=False) as s:
        tid = install.start(s, "node1", install.InstallRequest(), settings=settings).id or 0
    wait_for(settings, hid, S.INSTALL_WAIT)
    engine.stop()  # DBOS gone; the old execution keeps polling (a partitioned, not dead, conductor)
    FakeBmc.calls = []
    engine.start(settings, executor="alive:2")
    deadline = time.monotonic() + 10
    while task_owner(settings, tid) != "alive:2":
        assert time.monotonic() < deadline, "not taken over"
        time.sleep(0.05)
    installer_says(settings, hid, "done")
    t2 = task_of(settings, tid)
    assert t2.status == S.TASK_SUCCEEDED, t2.error
    assert t2.owner == "alive:2"
    wait_for(settings, hid, S.ACTIVE)
    # it did not start over: no second power-off / PXE
    assert "power off" not in FakeBmc.calls and "bootdev pxe" not in FakeBmc.calls
    with Session(get_engine(settings)) as s:
        resumed = [e for e in s.exec(select(Event).where(Event.host_id == hid)).all() if e.event == "install-resumed"]
    assert len(resumed) == 1 and resumed[0].message.startswith("install resumed at step wait-installer")


def task_owner(settings: Settings, task_id: int) -> str | None:
    with Session(get_engine(settings)) as s:
        t = s.get(Task, task_id)
        return t.owner if t else None
