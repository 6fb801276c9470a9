"""A lab rack of 2 bare-metal stand-ins installed for real, and proven from outside.

* image-based install + configuration (hardening + Docker) to ``active`` for both
  hosts through ``POST /racks/lab/provision``; then, from the test (not from
  prov): SSH in with the lab's admin key, Docker runs a container, password
  login is refused;
* the declared network of lab-01 (tests/e2e/conftest.py ``lab_net``): the installed
  guest answers ICMP and SSH on its static address (not on its DHCP reservation) and,
  through a VLAN interface the test made on the lab bridge, on its VLAN address;
* no reinstall loop: an active host forced to PXE-boot by its BMC
  (``ipmitool chassis bootdev pxe`` + power cycle) gets the local-boot script
  and comes back as the same installed system;
* the installer-driven path: the Debian installer (package
  debian-installer-12-netboot-amd64) booted with our preseed URL fetches its
  preseed with the host's token (the controller records the fetch).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from provisioner.lab import bmc as labbmc
from tests.e2e.conftest import VERIFY_IMAGE, Installed, LabNet, address, icmp_echo
from tests.support.helpers import require_binary
from tests.support.labrig import Rig, host_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

DI_DIR = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")


def test_rack_installs_to_active_and_is_proven_from_outside(installed: Installed) -> None:
    rig = installed.rig
    assert installed.task["status"] == "succeeded", installed.task.get("error")
    for name, host in installed.hosts.items():
        assert host["state"] == "active", f"{name}: {host['state']} ({host.get('last_error')})"
        ip = address(host)
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


def test_static_address_and_vlan_answer_from_the_controller(installed: Installed, lab_net: LabNet) -> None:
    rig = installed.rig
    host = installed.hosts[lab_net.host]
    assert host["state"] == "active", host.get("last_error")
    assert host["nics"][0]["address"].startswith(f"{lab_net.static_ip}/")
    assert host["network"]["vlans"][0]["id"] == lab_net.vlan_id
    # 1. the static address answers; the DHCP reservation does not (the installed OS took no lease)
    assert icmp_echo(lab_net.static_ip), f"no ICMP echo reply from {lab_net.static_ip}"
    assert not icmp_echo(lab_net.reservation, count=2, timeout=1.0), f"{lab_net.reservation} answers: DHCP?"
    # 2. from inside: the address is static (no "dynamic" lease flag), the default route is the declared one,
    #    and the VLAN sub-interface exists with its 802.1Q id
    addr = rig.ssh(lab_net.static_ip, "ip", "-4", "-o", "addr", "show", "dev", "prov0")
    assert addr.returncode == 0 and f"inet {lab_net.static_ip}/" in addr.stdout, addr.stdout + addr.stderr
    assert "dynamic" not in addr.stdout, addr.stdout
    route = rig.ssh(lab_net.static_ip, "ip", "-4", "route", "show", "default")
    assert f"default via {rig.spec.gateway} dev prov0" in route.stdout, route.stdout
    vlan = rig.ssh(lab_net.static_ip, "ip", "-d", "-4", "addr", "show", "dev", f"prov0.{lab_net.vlan_id}")
    assert f"vlan protocol 802.1Q id {lab_net.vlan_id}" in vlan.stdout, vlan.stdout + vlan.stderr
    assert f"inet {lab_net.vlan_ip}/" in vlan.stdout, vlan.stdout
    # 3. over the tagged VLAN, from the controller's side (the test's VLAN interface on the lab bridge)
    assert icmp_echo(lab_net.vlan_ip), f"no ICMP echo reply from {lab_net.vlan_ip} on VLAN {lab_net.vlan_id}"
    who = rig.ssh(lab_net.vlan_ip, "id", "-un")
    assert who.returncode == 0 and who.stdout.strip() == "prov", who.stderr
    route = subprocess.run(["ip", "-4", "route", "get", lab_net.vlan_ip], capture_output=True, text=True,
                           timeout=10)
    assert f"dev {lab_net.local_if}" in route.stdout, route.stdout  # it really went over the VLAN interface
    print(f"E2E network: {lab_net.host} answers on {lab_net.static_ip} (static) and {lab_net.vlan_ip} "
          f"(VLAN {lab_net.vlan_id} via {lab_net.local_if})")


def _wait_ssh(rig: Rig, ip: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rig.ssh(ip, "true", timeout=20).returncode == 0:
            return
        time.sleep(3)
    pytest.fail(f"{ip} did not answer SSH within {timeout:.0f} s after the PXE boot")


def test_forced_pxe_boot_of_an_active_host_does_not_reinstall(installed: Installed, lab_net: LabNet) -> None:
    rig = installed.rig
    name = "lab-01"
    host = installed.hosts[name]
    ip = address(host)
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
    # the declared network came back with it (ifupdown's files, not a cloud-init first boot)
    if name == lab_net.host:
        assert rig.ssh(lab_net.vlan_ip, "true").returncode == 0, f"VLAN address {lab_net.vlan_ip} after the reboot"
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
