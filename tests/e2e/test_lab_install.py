"""A lab rack of 2 bare-metal stand-ins installed for real, and proven from outside.

* image-based install + configuration (hardening + Docker) to ``active`` for both
  hosts through ``POST /racks/lab/provision``; then, from the test (not from
  prov): SSH in with the lab's admin key, Docker runs a container, password
  login is refused;
* no reinstall loop: an active host forced to PXE-boot by its BMC
  (``ipmitool chassis bootdev pxe`` + power cycle) gets the local-boot script
  and comes back as the same installed system;
* the installer-driven path: the Debian installer (package
  debian-installer-12-netboot-amd64) booted with our preseed URL fetches its
  preseed with the host's token (the controller records the fetch).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from provisioner.lab import bmc as labbmc
from tests.e2e.conftest import VERIFY_IMAGE, Installed
from tests.support.helpers import require_binary
from tests.support.labrig import Rig, host_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

DI_DIR = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")


def test_rack_installs_to_active_and_is_proven_from_outside(installed: Installed) -> None:
    rig = installed.rig
    assert installed.task["status"] == "succeeded", installed.task.get("error")
    for name, host in installed.hosts.items():
        assert host["state"] == "active", f"{name}: {host['state']} ({host.get('last_error')})"
        ip = host["nics"][0]["ip"]
        # 1. SSH with the admin key the lab generated (not the controller's Ansible key)
        who = rig.ssh(ip, "id", "-un")
        assert who.returncode == 0 and who.stdout.strip() == "prov", f"{name}: ssh failed: {who.stderr}"
        # 2. the container engine runs a container (image imported by the configuration run)
        run = rig.ssh(ip, "sudo", "docker", "run", "--rm", VERIFY_IMAGE, "/bin/echo", f"e2e-{name}")
        assert run.returncode == 0 and run.stdout.strip() == f"e2e-{name}", f"{name}: docker: {run.stderr}"
        # 3. password login refused: the server offers public keys only
        pw = rig.ssh(ip, "true", extra=["-o", "PubkeyAuthentication=no", "-o",
                                        "PreferredAuthentications=password,keyboard-interactive", "-o",
                                        "IdentitiesOnly=yes", "-o", "IdentityFile=/dev/null"])
        assert pw.returncode == 255 and "Permission denied (publickey)" in pw.stderr, pw.stderr
        # 4. hardening really ran: sshd refuses passwords in its effective config
        cfg = rig.ssh(ip, "sudo", "sshd", "-T")
        assert "passwordauthentication no" in cfg.stdout, cfg.stdout[-500:]
    print(f"E2E phases per host (s): {installed.phases}")


def _wait_ssh(rig: Rig, ip: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rig.ssh(ip, "true", timeout=20).returncode == 0:
            return
        time.sleep(3)
    pytest.fail(f"{ip} did not answer SSH within {timeout:.0f} s after the PXE boot")


def test_forced_pxe_boot_of_an_active_host_does_not_reinstall(installed: Installed) -> None:
    rig = installed.rig
    name = "lab-01"
    host = installed.hosts[name]
    ip = host["nics"][0]["ip"]
    marker = f"/var/tmp/prov-e2e-{int(time.time())}"
    # sync: the BMC's power off is a hard one, and an unsynced file would be lost with the page cache
    assert rig.ssh(ip, f"sudo touch {marker} && sync").returncode == 0  # one remote shell line
    before = len(host_events(rig, name))
    cfg = next(b for b in rig.lab.state.bmcs() if b.name == name)
    # Force a network boot through the BMC, independently of prov (ipmitool, IPMI 2.0 lanplus)
    assert labbmc.ipmitool(cfg, "chassis", "bootdev", "pxe").returncode == 0
    assert labbmc.ipmitool(cfg, "chassis", "power", "off").returncode == 0
    assert labbmc.ipmitool(cfg, "chassis", "power", "on").returncode == 0
    # What this MAC gets from the controller right now: the local-boot script
    script = httpx.get(f"{rig.spec.guest_url}/boot/ipxe/{host['nics'][0]['mac']}", timeout=10).text
    assert "booting from the local disk" in script and "kernel" not in script.split("\n", 2)[-1]
    _wait_ssh(rig, ip, 600)
    # Same installed system (the marker survived), still active, no install step happened
    assert rig.ssh(ip, "test", "-e", marker).returncode == 0, "the disk was rewritten: reinstall loop"
    with rig.ctl.client() as c:
        assert c.get(f"/api/v1/hosts/{name}")["state"] == "active"
    new = host_events(rig, name)[before:]
    assert not [e for e in new if e.get("event") == "install-fetch" or e.get("to_state") == "installing"], new


def test_preseed_installer_fetches_its_preseed_with_the_token(installed: Installed) -> None:
    require_binary(str(DI_DIR / "linux"))
    rig = installed.rig
    name = "lab-02"
    boot = rig.ctl.settings.boot_dir / "di"
    boot.mkdir(parents=True, exist_ok=True)
    for f in ("linux", "initrd.gz"):
        shutil.copyfile(DI_DIR / f, boot / f)
    with rig.ctl.client() as c:
        c.post("/api/v1/profiles", json={
            "name": "lab-preseed", "os_family": "debian", "install_method": "preseed",
            "kernel_url": "di/linux", "initrd_url": "di/initrd.gz",
            # The lab's DHCP names no DNS server and netcfg asks for one (critical priority) before it
            # fetches the preseed; answer it on the command line. apt goes through the proxy anyway.
            "kernel_args": f"console=ttyS0,115200n8 netcfg/get_nameservers={rig.spec.gateway}",
            "params": {"proxy": rig.spec.proxy_url, "admin_user": "prov"},
        })
        before = len(host_events(rig, name))
        t0 = time.monotonic()
        task = c.post(f"/api/v1/hosts/{name}/install", json={"profile": "lab-preseed", "configure": False})
        fetched = None
        deadline = t0 + 900  # TCG: the installer kernel + initrd, then d-i to its network preseed step
        while time.monotonic() < deadline and fetched is None:
            time.sleep(3)
            fetched = next((e for e in host_events(rig, name)[before:]
                            if e.get("event") == "install-fetch" and "install config" in e.get("message", "")), None)
        seconds = time.monotonic() - t0
        if fetched is None:
            pytest.fail(f"the Debian installer did not fetch its preseed within {seconds:.0f} s\n"
                        f"{rig.console(name, 30)}")
        print(f"E2E preseed: installer fetched its preseed {seconds:.0f} s after the install request")
        # stop the installer: abort the install (the host goes to install-failed, netboot off, token revoked)
        c.post(f"/api/v1/hosts/{name}/transition", json={"event": "abort", "message": "e2e: preseed fetch seen"})
        done = c.get(f"/api/v1/tasks/{task['id']}")
        assert c.get(f"/api/v1/hosts/{name}")["state"] in ("install-failed", "installing", "install-wait")
        assert done["id"] == task["id"]
