"""`prov lab up` / `prov lab down` through the real CLI, on a libvirtd the lab starts itself.

This is the README's path on a machine without a system libvirtd (no systemd):
the lab runs a libvirtd of its own, the BMC switches the guest's boot order
and powers it on well inside the IPMI client's deadline (the system libvirtd
started by hand re-probed QEMU on every define here, ~30 s; issue 7), and
`lab down` leaves nothing behind. The install itself is the e2e tier's job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import prov_executable
from tests.support.controller import LiveController, live_controller
from tests.support.helpers import require_binary, require_root
from tests.support.labrig import free_subnet

pytestmark = pytest.mark.integration


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[LiveController]:
    require_root()
    require_binary("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "dnsmasq", "ipmi_sim", "ipmitool",
                   "apt-cacher-ng", "ip", "ssh-keygen")
    with live_controller(tmp_path / "data", services=True) as c:
        yield c


def _prov(ctl: LiveController, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **ctl.env())
    return subprocess.run([prov_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_lab_up_runs_its_own_libvirtd_powers_on_in_time_and_down_removes_everything(ctl: LiveController) -> None:
    # short path: the lab's libvirtd socket lives under it (sockaddr_un holds 108 bytes)
    lab_dir = Path(tempfile.mkdtemp(prefix="prov-lab-"))
    bridge = f"prov-lt-{os.getpid() % 100000}"
    state_file = lab_dir / "state.json"
    try:
        up = _prov(ctl, "lab", "up", "--hosts", "1", "--memory", "256", "--disk", "1", "--subnet", free_subnet(),
                   "--bridge", bridge, "--lab-dir", str(lab_dir), "--uri", "", "--output", "json")
        assert up.returncode == 0, up.stderr[-2000:]
        rows = json.loads(up.stdout)
        assert [(r["host"], r["state"], r["guest"]) for r in rows] == [("lab-01", "available", "shutoff")]
        made = json.loads(state_file.read_text())["made"]
        uri = json.loads(state_file.read_text())["spec"]["uri"]
        if uri == "qemu:///system":
            pytest.skip("a system libvirtd runs on this machine; the lab used it instead of its own")
        assert uri.startswith("qemu+unix:///system?socket=" + str(lab_dir))
        pid = int(made["libvirtd_pid"])
        assert _pid_alive(pid)

        # power on through the lab's IPMI BMC: PXE once (a persistent boot-order define) + on
        with ctl.client() as c:
            t0 = time.monotonic()
            c.put("/api/v1/hosts/lab-01/boot-device", json={"device": "pxe"})
            host = c.post("/api/v1/hosts/lab-01/power", json={"action": "on", "wait": True})
            took = time.monotonic() - t0
        assert host["ok"] and host["power_state"] == "on", host
        domstate = subprocess.run(["virsh", "-c", uri, "domstate", "lab-01"], capture_output=True, text=True,
                                  check=False).stdout.strip()
        assert domstate == "running"
        xml = subprocess.run(["virsh", "-c", uri, "dumpxml", "--inactive", "lab-01"], capture_output=True,
                             text=True, check=False).stdout
        assert xml.index("dev='network'") < xml.index("dev='hd'")
        assert took < 30, f"power on with a boot-device change took {took:.1f} s"

        status = _prov(ctl, "lab", "status", "--lab-dir", str(lab_dir), "--output", "json")
        assert status.returncode == 0 and json.loads(status.stdout)[0]["guest"] == "running"

        down = _prov(ctl, "lab", "down", "--yes", "--lab-dir", str(lab_dir))
        assert down.returncode == 0, down.stderr[-2000:]
        assert not lab_dir.exists()
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False).returncode != 0
        for _ in range(50):
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
        assert not _pid_alive(pid), "the lab's libvirtd outlived lab down"
        assert subprocess.run(["pgrep", "-f", str(lab_dir)], capture_output=True, check=False).returncode != 0
        with ctl.client() as c:
            names = [h["name"] for h in c.get("/api/v1/hosts")["data"]]
        assert "lab-01" not in names
    finally:
        if state_file.exists():
            _prov(ctl, "lab", "down", "--yes", "--lab-dir", str(lab_dir))
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        shutil.rmtree(lab_dir, ignore_errors=True)
