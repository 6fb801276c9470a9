"""The controller SIGKILLed in each phase of an install, restarted on the same data directory.

Real peers only: ``prov serve`` in its own process group (killed with SIGKILL,
its forked IPMI workers with it), an ``ipmi_sim`` BMC whose chassis script
holds the machine's power and boot device, an ``sshd`` as the installed OS,
and the test as iPXE + installer over HTTP. To stop the controller inside a
BMC step, the chassis "holds" (ignores requests), so a power change never
confirms while the test kills the controller; the hold is released before the
restart. Each case asserts the same install task resumes and ends ``active``,
the history says it resumed and where, and nothing is left transient.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest
from sqlmodel import Session, create_engine, select

from provisioner import states as S
from provisioner.models import Host
from tests.support.install_faults import Installer, Machine, Rig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _assert_resumed_to_active(rig: Rig, m: Machine, task_id: int, step: str, inst: Installer,
                              redo: str | None = None) -> None:
    task = rig.wait_task(task_id, timeout=60)
    history = rig.history(m.name)
    assert task["status"] == S.TASK_SUCCEEDED, f"{task}\n{history}"
    host = rig.host(m.name)
    assert host["state"] == S.ACTIVE, history
    assert not host["netboot"], "netboot must be off once installed"
    resumed = [e for e in rig.events(m.name) if e["event"] == "install-resumed"]
    assert len(resumed) == 1 and resumed[0]["message"].startswith(
        f"install resumed at step {step} after a controller restart"), history
    assert resumed[0]["task_id"] == task_id
    if redo is not None:  # a step that powers on sets its boot device again first
        assert f"({redo} is done again first" in resumed[0]["message"], history
    # the machine really ends powered on and set to boot from disk (ipmi_sim passes "default")
    assert m.power() == "1" and m.boot() == "default", m.bmc.log()
    # one install task, the resumed one: no second task was started by the restart
    tasks = rig.api.get("/api/v1/tasks", params={"host": m.name, "kind": "install"})["data"]
    assert [t["id"] for t in tasks] == [task_id]
    # the host's key was recorded from the real sshd
    assert m.sshd.host_key in _host_key(rig, m.name)
    assert inst.config_status() == 403, "the one-time token must be spent after done"
    # the next network boot of the MAC is a local boot: no token, no installer
    script = httpx.get(f"{rig.ctl.url}/boot/ipxe/{m.mac}", timeout=10).text
    assert "prov.token=" not in script
    rig.assert_settled()


def _host_key(rig: Rig, name: str) -> str:
    """The recorded SSH host key, read from the host row (the API does not publish it)."""
    engine = create_engine(f"sqlite:///{rig.ctl.data_dir / 'prov.db'}")
    try:
        with Session(engine) as s:
            host = s.exec(select(Host).where(Host.name == name)).one()
            return host.ssh_host_key or ""
    finally:
        engine.dispose()


@pytest.mark.parametrize("step", ["power-off", "power-on"])
def test_killed_in_a_bmc_step_of_installing(rig: Rig, machine: Machine, step: str) -> None:
    """installing: killed while the BMC has not confirmed power off / power on."""
    m = machine
    if step == "power-off":
        m.bmc.set_state("power", "1")  # the machine was running: power off has work to do
    m.hold()  # the chassis ignores every request from now on
    task_id = rig.install(m.name)  # power off of a machine that is off confirms at once
    rig.wait_step(task_id, step)
    assert rig.host(m.name)["state"] == S.INSTALLING
    rig.ctl.kill()
    m.hold(False)  # the machine answers again by the time the controller is back
    rig.ctl.start()
    inst = rig.installer(m)
    host = rig.wait_state(m.name, S.INSTALL_WAIT, timeout=40)
    assert host["power_state"] == "on" and m.power() == "1" and m.boot() == "pxe"
    inst.netboot()
    m.sshd.start()
    inst.install()
    _assert_resumed_to_active(rig, m, task_id, step, inst, redo="boot-pxe" if step == "power-on" else None)


def test_killed_while_waiting_for_the_installer(rig: Rig, machine: Machine) -> None:
    """install-wait: the installer keeps running while the controller is down and reports after."""
    m = machine
    task_id = rig.install(m.name)
    rig.wait_state(m.name, S.INSTALL_WAIT)
    rig.wait_step(task_id, "wait-installer")
    inst = rig.installer(m).netboot()
    inst.fetch_config()
    assert inst.report("start").status_code == 200
    rig.ctl.kill()
    # the installer's progress report while nobody listens: lost, as with a real installer (`|| true`)
    with pytest.raises(httpx.ConnectError):
        inst.post("progress", "installing the base system", 50)
    rig.ctl.start()
    # the same boot's token still works after the restart (only its hash is stored, with its expiry)
    assert inst.post("progress", "installing the base system", 70).status_code == 200
    m.sshd.start()
    r = inst.report("done")
    assert r.status_code == 200 and r.json()["state"] == S.BOOTING, r.text
    _assert_resumed_to_active(rig, m, task_id, "wait-installer", inst)
    messages = [e["message"] for e in rig.events(m.name) if e["event"] == "install-progress"]
    assert messages == ["installing the base system (70%)"]


def test_killed_during_first_boot(rig: Rig, machine: Machine) -> None:
    """booting: the installer halted the machine; killed while the BMC has not confirmed power on."""
    m = machine
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "wait-installer")
    inst = rig.installer(m).netboot()
    m.hold()  # from the end of the install on, the chassis ignores requests...
    inst.install(power_off_at_end=m)  # ...and the installer left the machine off
    rig.wait_step(task_id, "first-boot")
    assert rig.host(m.name)["state"] == S.BOOTING
    rig.ctl.kill()
    m.hold(False)
    rig.ctl.start()
    m.sshd.start()
    _assert_resumed_to_active(rig, m, task_id, "first-boot", inst, redo="boot-disk")
    assert "power 1" in m.bmc.log(), "the resumed first-boot step must power the halted machine on"


def test_killed_while_the_bmc_is_frozen_in_boot_disk(rig_factory: Callable[..., Rig]) -> None:
    """booting: the BMC stops answering (SIGSTOP) just as the workflow sets disk boot; the controller
    dies mid-call; the BMC comes back (SIGCONT) before the controller does."""
    rig = rig_factory(power_call_timeout=5.0)  # a wide window to kill in before the call gives up
    m = rig.machines[0]
    rig.add_profile("deb12", ssh_port=m.ssh_port)
    rig.enroll(m, "deb12")
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "wait-installer")
    inst = rig.installer(m).netboot()
    assert m.bmc.proc is not None
    os.kill(m.bmc.proc.pid, signal.SIGSTOP)
    try:
        inst.install()  # the installer does not need the BMC
        rig.wait_step(task_id, "boot-disk", timeout=10)
        rig.ctl.kill()  # mid-call: the set-boot-device request has not been answered
    finally:
        os.kill(m.bmc.proc.pid, signal.SIGCONT)
    m.sshd.start()
    rig.ctl.start()
    _assert_resumed_to_active(rig, m, task_id, "boot-disk", inst)
    events = rig.events(m.name)
    resumed_at = next(i for i, e in enumerate(events) if e["event"] == "install-resumed")
    disk = [i for i, e in enumerate(events) if e["event"] == "boot-device" and "disk" in e["message"]]
    assert disk and min(disk) > resumed_at, "the killed controller must not have set disk boot"


def test_killed_while_waiting_for_ssh(rig: Rig, machine: Machine) -> None:
    """booting: the OS is up but its SSH is not yet; SSH opens while the controller is down."""
    m = machine
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "wait-installer")
    inst = rig.installer(m).netboot()
    inst.install()
    rig.wait_step(task_id, "wait-ssh")
    rig.ctl.kill()
    m.sshd.start()
    rig.ctl.start()
    _assert_resumed_to_active(rig, m, task_id, "wait-ssh", inst)


def test_deadline_passing_while_the_controller_is_down(rig_factory: Callable[..., Rig]) -> None:
    """A host whose wait deadline passed during the outage is failed after the restart, not left waiting."""
    rig = rig_factory(install_wait_timeout=3.0)
    m = rig.machines[0]
    rig.add_profile("deb12", ssh_port=m.ssh_port)
    rig.enroll(m, "deb12")
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "wait-installer")
    inst = rig.installer(m).netboot()
    rig.ctl.kill()
    time.sleep(3.5)  # the deadline passes while nobody is there to see it
    rig.ctl.start()
    task = rig.wait_task(task_id, timeout=30)
    host = rig.host(m.name)
    history = rig.history(m.name)
    assert task["status"] == S.TASK_FAILED and host["state"] == S.INSTALL_FAILED, history
    assert "timed out in install-wait" in host["last_error"], history
    assert inst.config_status() == 403
    rig.assert_settled()


def test_one_kill_with_hosts_in_different_phases(rig_factory: Callable[..., Rig]) -> None:
    """Three installs cut off at once (installing, install-wait, booting): each resumes its own step."""
    rig = rig_factory(machines=3)
    a, b, c = rig.machines
    for m in rig.machines:
        rig.add_profile(f"deb12-{m.name}", ssh_port=m.ssh_port)
        rig.enroll(m, f"deb12-{m.name}")
    a.bmc.set_state("power", "1")
    a.hold()  # a: stuck in power-off
    ta = rig.install(a.name)
    tb = rig.install(b.name)  # b: waiting for its installer
    tc = rig.install(c.name)  # c: installed, waiting for SSH
    rig.wait_step(ta, "power-off")
    rig.wait_step(tb, "wait-installer")
    rig.wait_step(tc, "wait-installer")
    inst_b, inst_c = rig.installer(b).netboot(), rig.installer(c).netboot()
    inst_c.install()
    rig.wait_step(tc, "wait-ssh")
    rig.ctl.kill()
    a.hold(False)
    c.sshd.start()
    rig.ctl.start()
    rig.wait_step(ta, "wait-installer", timeout=40)
    inst_a = rig.installer(a).netboot()
    for m, inst in ((a, inst_a), (b, inst_b)):
        m.sshd.start()
        inst.install()
    for task_id in (ta, tb, tc):
        rig.wait_task(task_id, timeout=60)
    for m, task_id, step, inst in ((a, ta, "power-off", inst_a), (b, tb, "wait-installer", inst_b),
                                   (c, tc, "wait-ssh", inst_c)):
        _assert_resumed_to_active(rig, m, task_id, step, inst)
