"""Install faults other than a dead controller, each against real peers, each followed by a retry.

* a BMC that stops answering mid-install (ipmi_sim killed while the installer runs);
* an installer that reports an error;
* a callback that never comes (the install-wait deadline passes);
* a host that boots but never opens SSH (the booting deadline passes);
* an operator who aborts the host or cancels its install task while the installer runs.

Each ends in ``install-failed`` with the reason in the host's history and
``last_error``, the install task failed with that reason, netboot off and the
one-time token refused; then ``POST /hosts/{name}/retry`` (after the fault is
repaired) takes the host to ``active`` with a new token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from provisioner import states as S
from tests.support.install_faults import Installer, Machine, Rig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _setup(rig_factory: Callable[..., Rig], **settings: Any) -> tuple[Rig, Machine]:
    rig = rig_factory(**settings)
    m = rig.machines[0]
    rig.add_profile("deb12", ssh_port=m.ssh_port)
    rig.enroll(m, "deb12")
    return rig, m


def _start_install(rig: Rig, m: Machine) -> tuple[int, Installer]:
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "wait-installer")
    assert m.power() == "1" and m.boot() == "pxe", m.bmc.log()
    return task_id, rig.installer(m).netboot()


def _assert_failed(rig: Rig, m: Machine, task_id: int, inst: Installer, *reason: str,
                   timeout: float = 30.0) -> dict[str, Any]:
    """install-failed with every ``reason`` fragment in last_error, the fail line and the task error."""
    task = rig.wait_task(task_id, timeout=timeout)
    host = rig.host(m.name)
    history = rig.history(m.name)
    assert task["status"] == S.TASK_FAILED, f"{task}\n{history}"
    assert host["state"] == S.INSTALL_FAILED, history
    fails = [e for e in rig.events(m.name) if e["to_state"] == S.INSTALL_FAILED]
    assert len(fails) == 1, history
    for part in reason:
        assert part in host["last_error"], f"{part!r} not in last_error {host['last_error']!r}\n{history}"
        assert part in fails[0]["message"], history
        assert part in (task["error"] or ""), f"{part!r} not in task error {task['error']!r}"
    assert not host["netboot"], "a failed install must leave netboot off"
    assert inst.config_status() == 403, "the one-time token must be refused after a failure"
    assert inst.post("done", "late").status_code == 403
    script = httpx.get(f"{rig.ctl.url}/boot/ipxe/{m.mac}", timeout=10).text
    assert "prov.token=" not in script, "a failed host's next network boot must not reach the installer"
    assert "retry" in host["allowed_events"]
    rig.assert_settled()
    return host


def _retry_to_active(rig: Rig, m: Machine, old: Installer) -> None:
    task_id = rig.retry(m.name)
    rig.wait_step(task_id, "wait-installer")
    inst = rig.installer(m).netboot()
    assert inst.token != old.token
    m.sshd.start()
    inst.install()
    task = rig.wait_task(task_id, timeout=60)
    history = rig.history(m.name)
    assert task["status"] == S.TASK_SUCCEEDED, f"{task}\n{history}"
    host = rig.host(m.name)
    assert host["state"] == S.ACTIVE and not host["netboot"], history
    assert m.power() == "1" and m.boot() == "default", m.bmc.log()
    assert inst.config_status() == 403
    rig.assert_settled()


def test_bmc_stops_answering_mid_install(rig_factory: Callable[..., Rig]) -> None:
    rig, m = _setup(rig_factory)
    task_id, inst = _start_install(rig, m)
    inst.fetch_config()
    assert inst.report("start").status_code == 200
    m.bmc.kill()  # the BMC is gone while the installer runs
    t0 = time.monotonic()
    r = inst.report("done")  # the installer did its job: accepted
    assert r.status_code == 200 and r.json()["state"] == S.BOOTING, r.text
    # boot-disk needs the BMC: 2 s call bound, one retry, then the workflow gives up
    _assert_failed(rig, m, task_id, inst, "step boot-disk failed", "BMC 127.0.0.1", timeout=30)
    assert time.monotonic() - t0 < 30
    errors = [e for e in rig.events(m.name) if e["event"] == "power-error"]
    assert errors and "set boot device disk" in errors[-1]["message"], rig.history(m.name)
    host = rig.host(m.name)
    assert host["bmc"]["error"], host["bmc"]
    m.bmc.start()  # the BMC is back (same port, same chassis state)
    _retry_to_active(rig, m, inst)
    assert rig.host(m.name)["bmc"]["error"] is None


def test_installer_reports_an_error(rig_factory: Callable[..., Rig]) -> None:
    rig, m = _setup(rig_factory)
    task_id, inst = _start_install(rig, m)
    inst.fetch_config()
    assert inst.report("start").status_code == 200
    r = inst.post("error", "partman: no root file system defined on /dev/sda")
    assert r.status_code == 200 and r.json()["state"] == S.INSTALL_FAILED, r.text
    _assert_failed(rig, m, task_id, inst, "installer reported an error",
                   "partman: no root file system defined on /dev/sda")
    _retry_to_active(rig, m, inst)


def test_installer_callback_never_comes(rig_factory: Callable[..., Rig]) -> None:
    rig, m = _setup(rig_factory, install_wait_timeout=6.0)
    task_id, inst = _start_install(rig, m)
    inst.fetch_config()  # the installer starts, then hangs: no start, no done
    t0 = time.monotonic()
    _assert_failed(rig, m, task_id, inst, "timed out in install-wait",
                   "the installer never reported done or an error", timeout=30)
    assert time.monotonic() - t0 < 20
    _retry_to_active(rig, m, inst)


def test_host_boots_but_never_opens_ssh(rig_factory: Callable[..., Rig]) -> None:
    rig, m = _setup(rig_factory, ssh_wait_timeout=6.0)
    task_id, inst = _start_install(rig, m)
    inst.install()  # done; the machine boots from disk, but its SSH port stays closed
    t0 = time.monotonic()
    _assert_failed(rig, m, task_id, inst, "timed out in booting",
                   "the installed system never opened SSH", timeout=30)
    assert time.monotonic() - t0 < 20
    assert f"no SSH banner on 127.0.0.1:{m.ssh_port}" in rig.task(task_id)["error"]
    events = [e["event"] for e in rig.events(m.name)]
    assert "ssh-up" not in events and "install-done" in events
    _retry_to_active(rig, m, inst)  # sshd is started by the retry: SSH now opens
    assert any(e["event"] == "ssh-up" for e in rig.events(m.name))


@pytest.mark.parametrize("how", ["abort", "cancel"])
def test_operator_stops_the_install_while_the_installer_runs(rig_factory: Callable[..., Rig], how: str) -> None:
    """``abort`` (host transition) or ``cancel`` (the install task): install-failed with the reason."""
    rig, m = _setup(rig_factory)
    task_id, inst = _start_install(rig, m)
    inst.fetch_config()
    assert inst.report("start").status_code == 200
    if how == "abort":
        rig.api.post(f"/api/v1/hosts/{m.name}/transition", json={"event": "abort", "message": "wrong disk layout"})
        reason = "wrong disk layout"
    else:
        rig.api.post(f"/api/v1/tasks/{task_id}/cancel")
        reason = "install aborted at step wait-installer: the install task was cancelled"
    host = _assert_failed(rig, m, task_id, inst, reason)
    assert host["power_state"] == "on"  # stopping the workflow does not power the machine off
    assert inst.report("done").status_code == 403  # the installer's late report is refused
    _retry_to_active(rig, m, inst)
