"""Bad input against real SSH hosts: each ends with the host and the failing task named.

Unknown playbook (rejected before anything moves), unreachable host, wrong SSH
key, and a task failure (sshd config that ``sshd -t`` rejects: validated
before install, so the target keeps its working sshd).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner import states as S
from tests.integration.ansible.conftest import Api, ssh
from tests.support import nshost

pytestmark = pytest.mark.integration


def test_unknown_playbook_changes_nothing(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    name = f"bad-pb-{ansible_lab.hosts[1].name}"
    prov_api.add_host(name, ansible_lab.hosts[1].address)
    resp = prov_api.http.post(f"/api/v1/hosts/{name}/configure", json={"playbooks": ["harden", "format-disks"]})
    assert resp.status_code == 422
    assert "format-disks" in resp.json()["message"]
    host = prov_api.host(name)
    assert host.state == S.AVAILABLE and host.version == 0  # not moved, not touched


def test_host_in_wrong_state_is_409(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    name = f"enrolled-{ansible_lab.hosts[1].name}"
    prov_api.add_host(name, ansible_lab.hosts[1].address, state=S.ENROLLED)
    resp = prov_api.http.post(f"/api/v1/hosts/{name}/configure", json={"playbooks": ["harden"]})
    assert resp.status_code == 409
    assert prov_api.host(name).state == S.ENROLLED


def test_unreachable_host(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    name = "ghost"
    prov_api.add_host(name, ansible_lab.bridge.address(200))  # nothing answers there
    task = prov_api.wait(prov_api.http.post(f"/api/v1/hosts/{name}/configure",
                                            json={"playbooks": ["harden"]}).json()["id"])
    assert task["status"] == "failed"
    assert "host ghost" in task["error"] and "unreachable" in task["error"]
    assert task["result"]["hosts"]["ghost"]["status"] == "unreachable"
    host = prov_api.host(name)
    assert host.state == S.CONFIGURE_FAILED
    assert host.last_error and "ghost" in host.last_error and "unreachable" in host.last_error


def test_wrong_key(ansible_lab: nshost.Lab, prov_api: Api, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    name = f"wrongkey-{ansible_lab.hosts[1].name}"
    prov_api.add_host(name, ansible_lab.hosts[1].address)
    old = prov_api.settings.ansible_ssh_key
    prov_api.settings.ansible_ssh_key = other
    try:
        task = prov_api.wait(prov_api.http.post(f"/api/v1/hosts/{name}/configure",
                                                json={"playbooks": ["harden"]}).json()["id"])
    finally:
        prov_api.settings.ansible_ssh_key = old
    assert task["status"] == "failed"
    assert name in task["error"] and "Permission denied" in task["error"]
    host = prov_api.host(name)
    assert host.state == S.CONFIGURE_FAILED and "unreachable" in (host.last_error or "")


def test_failing_task_is_named_and_target_keeps_working(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    target = ansible_lab.hosts[1]
    name = f"badcfg-{target.name}"
    prov_api.add_host(name, target.address)
    resp = prov_api.http.post(f"/api/v1/hosts/{name}/configure",
                              json={"playbooks": ["harden"], "vars": {"hardening_sshd_ciphers": ["rot13-cbc"]}})
    task = prov_api.wait(resp.json()["id"])
    assert task["status"] == "failed"
    assert f"host {name}" in task["error"] and "Install the sshd hardening drop-in" in task["error"]
    host = prov_api.host(name)
    assert host.state == S.CONFIGURE_FAILED
    assert "Install the sshd hardening drop-in" in (host.last_error or "")
    # sshd -t refused the file before it was installed: the host still lets us in
    assert ssh(target.address, ansible_lab.key, nshost.ADMIN_USER, "true").returncode == 0
    check = ssh(target.address, ansible_lab.key, nshost.ADMIN_USER,
                "test ! -e /etc/ssh/sshd_config.d/50-prov-hardening.conf || ! grep -q rot13 "
                "/etc/ssh/sshd_config.d/50-prov-hardening.conf")
    assert check.returncode == 0
    # and the way back: configure again from configure-failed (allowed), without the bad var
    events = prov_api.http.get(f"/api/v1/configure/{task['id']}").json()["events"]
    assert any(e["event"] == "ansible-failed" and "Install the sshd hardening drop-in" in e["message"] for e in events)


def test_dynamic_inventory_from_the_database(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    """``ansible-inventory -i playbooks/inventory/prov_inventory.sh`` against the real API and CLI."""
    import json
    import os
    import sys

    from tests.support.cli import prov_executable

    name = f"inv-{ansible_lab.hosts[1].name}"
    prov_api.add_host(name, ansible_lab.hosts[1].address, rack=f"rk-{ansible_lab.hosts[1].name}")
    repo = Path(__file__).resolve().parents[3]
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PROV_URL": prov_api.server.url, "PROV_TOKEN": prov_api.server.token,
           "PROV_BIN": prov_executable(), "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    inventory = repo / "provisioner/playbooks/inventory/prov_inventory.sh"
    proc = subprocess.run([str(bindir / "ansible-inventory"), "-i", str(inventory),
                           "--list"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    group = f"rack_rk_{ansible_lab.hosts[1].name}"
    assert name in inv[group]["hosts"] and name in inv["role_docker"]["hosts"]
    assert inv["_meta"]["hostvars"][name]["ansible_host"] == ansible_lab.hosts[1].address
    one = subprocess.run([prov_executable(), "inventory", "ansible", "--host", name], capture_output=True, text=True,
                         env=env, timeout=60)
    assert json.loads(one.stdout)["prov_rack"] == f"rk-{ansible_lab.hosts[1].name}"
