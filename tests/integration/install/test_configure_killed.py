"""The controller SIGKILLed while an install's configuration playbooks run, restarted, the install finishing.

Real peers only: ``prov serve`` as a subprocess, an ``ipmi_sim`` BMC, the test as
iPXE + installer over HTTP (tests/support/install_faults), and as the installed
OS a Debian 12 namespace host (tests.support.nshost: cached debootstrap
root, its own net/pid/mount namespaces, sshd on a bridge address) that the
controller really configures with the ``harden`` playbook through
ansible-runner. The slow controls (apt installs, auditd, updates, package
removal, service disabling) are switched off in the profile's ``ansible_vars``
so one run takes well under a minute.

The kill is what a crash or an OOM kill does: SIGKILL of the main ``prov serve``
PID only, not of its process group, while ``ansible-playbook`` (a child of the
controller) is running against the host. The orphaned run must not keep
working on the host next to the run the restarted controller starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioner import states as S
from tests.support import nshost
from tests.support.helpers import require_binary, require_root
from tests.support.install_faults import Rig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Role switches for a quick but real hardening run (sshd drop-in, admin user,
# net sysctls, banner, file permissions); what is off needs apt downloads,
# systemd or a kernel the namespace host does not have.
QUICK_HARDENING = {
    "hardening_auto_updates": False,
    "hardening_auditd": False,
    "hardening_remove_packages": False,
    "hardening_disable_services": False,
    "hardening_nftables": False,
    "hardening_sysctl_kernel": False,
}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[nshost.Lab]:
    """One namespace host (plus bridge and apt proxy); the controller's Ansible key is authorised on it."""
    require_root()
    require_binary("debootstrap", "apt-cacher-ng", "unshare", "ip", "nc", "zstd", "ssh")
    tag = secrets.token_hex(2)
    lab = nshost.Lab.up(tag, [f"k{tag}"], tmp_path / "nshost", proxy_port=nshost.free_low_port())
    try:
        yield lab
    finally:
        lab.down()


# --------------------------------------------------------------------------- /proc
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parens
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _ansible_runs(marker: str) -> list[int]:
    """Live ``ansible-playbook`` processes (incl. their forked workers) whose command line names ``marker``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"ansible-playbook") for a in argv[:2]) and marker.encode() in b" ".join(argv) \
                and _alive(int(d.name)):
            pids.append(int(d.name))
    return sorted(pids)


def _descends_from(pid: int, ancestor: int) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        st = _proc_stat(pid)
        if st is None:
            return False
        if st[1] == ancestor:
            return True
        pid, seen = st[1], seen + 1
    return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _remote_ansible(netns: str) -> list[str]:
    """Command lines of Ansible modules running on the target (become wraps each in ``BECOME-SUCCESS``)."""
    ns = f"net:[{os.stat(f'/run/netns/{netns}').st_ino}]"
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "ns" / "net") != ns:
                continue
            argv = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"BECOME-SUCCESS" in argv and _alive(int(d.name)):
            found.append(argv.replace(b"\0", b" ").decode(errors="replace")[:120])
    return found


def _wait_no_remote(netns: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = _remote_ansible(netns)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# --------------------------------------------------------------------------- the test
def test_killed_while_configuring(target: nshost.Lab, rig_factory: Callable[..., Rig]) -> None:
    """configuring: SIGKILL of the controller's PID mid-playbook; the restart reruns configuration to active."""
    host_ns = target.hosts[0]
    rig = rig_factory(ansible_ssh_key=str(target.key), ansible_user=nshost.ADMIN_USER, configure_timeout=300.0)
    m = rig.machines[0]
    runs_dir = rig.ctl.data_dir / "runs"
    stray: list[int] = []
    try:
        rig.api.post("/api/v1/profiles", json={
            "name": "deb12-harden", "os_family": "debian", "install_method": "preseed",
            "kernel_url": "images/debian/linux", "initrd_url": "images/debian/initrd.gz",
            "kernel_args": "console=ttyS0", "playbooks": ["harden"], "container_engine": "none",
            "params": {"ssh_port": 22, "ansible_vars": QUICK_HARDENING}})
        rig.enroll(m, "deb12-harden", address=host_ns.address)
        task_id = rig.install(m.name)
        rig.wait_step(task_id, "wait-installer")
        inst = rig.installer(m).netboot()
        inst.install()  # the namespace host's sshd is already up: wait-ssh passes at once
        rig.wait_state(m.name, S.CONFIGURING, timeout=60)
        # the playbook is under way: its first result (facts) is in the history
        rig.wait("the first ansible result in the history",
                 lambda: any(e["event"].startswith("ansible-") for e in rig.events(m.name)), 90, m.name)
        assert rig.ctl.proc is not None
        ctl_pid = rig.ctl.proc.pid
        first = _ansible_runs(str(runs_dir))
        stray += first
        assert first and all(_descends_from(p, ctl_pid) for p in first), \
            f"no ansible-playbook under the controller: {first}"
        # the install's own step stays "configure" while Ansible reports its tasks (it is what resumes)
        assert rig.task(task_id)["step"] == "configure"
        assert rig.host(m.name)["state"] == S.CONFIGURING

        # the crash: the main PID only, as the OOM killer or `kill -9 PID` does (not the process group)
        os.kill(ctl_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        rig.ctl.proc.wait(10)
        left = _wait_gone(first, 10)
        gone_after = time.monotonic() - t_kill
        assert not left, f"ansible-playbook {left} kept running after its controller was killed"
        remote = _wait_no_remote(host_ns.netns, 20)
        assert not remote, f"Ansible modules of the dead run still run on the target: {remote}"
        dead_runs = sorted(runs_dir.glob(f"task{task_id}-*"))
        assert len(dead_runs) == 1 and (dead_runs[0] / "ssh" / "id").exists()  # the crash skipped the cleanup
        rig.ctl.kill()  # nothing of the controller is left to kill: its IPMI zygote exits by itself

        rig.ctl.start()
        task = rig.wait_task(task_id, timeout=150)
        events = rig.events(m.name)
        history = rig.history(m.name)
        assert task["status"] == S.TASK_SUCCEEDED, f"{task}\n{history}\n{rig.ctl.log_tail(3000)}"
        host = rig.host(m.name)
        assert host["state"] == S.ACTIVE and not host["netboot"], history
        resumed = [i for i, e in enumerate(events) if e["event"] == "install-resumed"]
        assert len(resumed) == 1, history
        r = resumed[0]
        assert events[r]["message"].startswith("install resumed at step configure after a controller restart"), \
            history
        assert events[r]["task_id"] == task_id
        # both runs are in the history: facts gathered before the kill and again after the restart,
        # and only the second run finished (the move to active comes after the resume)
        facts = [i for i, e in enumerate(events) if e["event"] == "ansible-ok" and "Gathering Facts" in e["message"]]
        assert len(facts) == 2 and facts[0] < r < facts[1], history
        done = [i for i, e in enumerate(events) if e["to_state"] == S.ACTIVE]
        assert len(done) == 1 and done[0] > facts[1], history
        assert events[done[0]]["message"].startswith("configured (ok="), history
        assert not any(e["event"] in ("ansible-failed", "ansible-unreachable") for e in events), history
        # two run dirs for the one task: the killed one never finished, the second did; the key
        # copy the killed run left behind was removed when the restarted controller ran Ansible
        runs = sorted(runs_dir.glob(f"task{task_id}-*"))
        assert len(runs) == 2 and runs[0] == dead_runs[0], runs
        assert not list(runs[0].glob("artifacts/*/status")), "the killed run cannot have finished"
        assert [p.read_text() for p in runs[1].glob("artifacts/*/status")] == ["successful"]
        assert not [p for p in runs_dir.glob("*/ssh/id")], "a copy of the controller's SSH key was left behind"
        # one install task, the resumed one
        tasks = rig.api.get("/api/v1/tasks", params={"host": m.name, "kind": "install"})["data"]
        assert [t["id"] for t in tasks] == [task_id]
        # the playbook really ran on the target: the sshd drop-in is in its root
        assert (host_ns.workdir / "upper" / "etc/ssh/sshd_config.d/50-prov-hardening.conf").is_file()
        rig.assert_settled()
        print(f"\nansible-playbook gone {gone_after:.1f} s after the kill")
    finally:
        for pid in _ansible_runs(str(runs_dir)) + stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
