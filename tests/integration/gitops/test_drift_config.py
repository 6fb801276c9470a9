"""Config drift by Ansible check mode against a real SSH host (a Debian root in its own netns).

The host is configured with the hardening playbook (slow controls off through the
profile's ansible_vars), an inventory naming it ``configured`` is recorded as
applied, then the sshd drop-in the role wrote is edited by hand over SSH.
``prov drift --config`` must name the drop-in task as config drift, and the
check must leave the hand edit in place (check mode changes nothing).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select

from provisioner import states as S
from provisioner.conductor import engine
from provisioner.db import get_engine
from provisioner.models import Event, Host, Profile
from tests.support import nshost
from tests.support.cli import LiveServer, prov_executable, start_inprocess_server
from tests.support.helpers import require_binary, require_root

pytestmark = pytest.mark.integration

# The hardening controls that take minutes on a fresh root (as tests/e2e/conftest.py REDUCED_VARS).
REDUCED_VARS: dict[str, Any] = {
    "hardening_auto_updates": False,
    "hardening_auditd": False,
    "hardening_remove_packages": False,
    "hardening_disable_services": False,
}
DROP_IN = "/etc/ssh/sshd_config.d/50-prov-hardening.conf"
TASK = "Install the sshd hardening drop-in"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]


@dataclass
class Rig:
    lab: nshost.Lab
    server: LiveServer
    http: httpx.Client

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        target = self.lab.hosts[0]
        return subprocess.run(["ssh", *SSH_OPTS, "-i", str(self.lab.key), f"{nshost.ADMIN_USER}@{target.address}",
                               command], capture_output=True, text=True, timeout=60)

    def wait(self, task_id: int, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.http.get(f"/api/v1/tasks/{task_id}").json()
            if task["status"] in ("succeeded", "failed", "cancelled"):
                return dict(task)
            time.sleep(0.5)
        raise AssertionError(f"task {task_id} did not finish in {timeout} s")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PROV_URL": self.server.url, "PROV_TOKEN": self.server.token, "COLUMNS": "250"}
        return subprocess.run([prov_executable(), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    require_root()
    require_binary("debootstrap", "apt-cacher-ng", "unshare", "nft", "sshd", "ssh", "nc", "zstd")
    tag = secrets.token_hex(2)
    lab = nshost.Lab.up(tag, [f"d{tag}a"], tmp_path_factory.mktemp("drift-nshosts"),
                        proxy_port=nshost.free_low_port())
    engine.stop()
    try:
        with start_inprocess_server(tmp_path_factory.mktemp("drift-prov")) as server:
            server.settings.ansible_ssh_key = lab.key
            server.settings.ansible_user = nshost.ADMIN_USER
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                              timeout=30) as http:
                yield Rig(lab, server, http)
    finally:
        engine.stop()
        lab.down()


def _drop_in(rig: Rig) -> str:
    out = rig.ssh(f"sudo cat {DROP_IN}")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_check_mode_reports_hand_edit_and_changes_nothing(rig: Rig) -> None:
    target = rig.lab.hosts[0]
    name = f"cfg-{target.name}"
    with Session(get_engine(rig.server.settings)) as s:
        prof = Profile(name="hardened", playbooks=["harden"], container_engine="none",
                       params={"ansible_vars": REDUCED_VARS})
        s.add(prof)
        s.commit()
        s.add(Host(name=name, ip_address=target.address, state=S.AVAILABLE, bmc_kind="manual",
                   profile_id=prof.id))
        s.commit()

    # nothing applied yet: the check refuses (422), it has nothing to compare with
    assert rig.http.post("/api/v1/gitops/drift/config", json={}).status_code == 422

    t0 = time.monotonic()
    resp = rig.http.post(f"/api/v1/hosts/{name}/configure", json={"playbooks": ["harden"], "engine": "none"})
    assert resp.status_code == 202, resp.text
    task = rig.wait(resp.json()["id"])
    configured = time.monotonic() - t0
    assert task["status"] == "succeeded", task["error"]
    doc = {"hosts": [{"name": name, "state": "configured", "playbooks": ["harden"], "engine": "none"}]}
    assert rig.http.put("/api/v1/gitops/applied", json={"source": "test", "document": doc,
                                                        "objects": [f"host/{name}"]}).status_code == 200

    # an operator edits the hardening drop-in by hand
    before = _drop_in(rig)
    assert "MaxAuthTries 3" in before, before
    edit = rig.ssh(f"sudo sed -i 's/^MaxAuthTries 3$/MaxAuthTries 10/' {DROP_IN}")
    assert edit.returncode == 0, edit.stderr
    edited = _drop_in(rig)
    assert "MaxAuthTries 10" in edited

    t0 = time.monotonic()
    cli = rig.cli("drift", "--config", "--output", "json")
    second_check = time.monotonic() - t0
    assert cli.returncode == 8, cli.stdout + cli.stderr  # drift -> exit 8
    rows = json.loads(cli.stdout)
    assert [(r["object"], r["kind"]) for r in rows] == [(f"host/{name}", "config")], rows
    # Only the edited file's task (and the reload it notifies) would change: on the rest of this
    # configured host check mode finds nothing, so the role gives no false positives.
    names = re.findall(r"'([^']*)'", rows[0]["detail"])
    assert TASK in names and set(names) <= {TASK, "Reload sshd"}, rows

    # check mode changed nothing: the hand edit is still there, byte for byte
    assert _drop_in(rig) == edited
    with Session(get_engine(rig.server.settings)) as s:
        host = s.exec(select(Host).where(Host.name == name)).one()
        assert host.state == S.ACTIVE  # no lifecycle move either
        lines = [e.message for e in s.exec(select(Event).where(Event.host_id == host.id, Event.event == "drift")
                                           .order_by(col(Event.id))).all()]
    assert lines and lines[-1].startswith("drift: config: ") and TASK in lines[-1], lines
    print(f"\nconfigure {configured:.0f} s, check-mode run (CLI) {second_check:.0f} s")


def test_api_rejects_hosts_outside_the_inventory(rig: Rig) -> None:
    # relies on nothing from the other test: with or without an applied inventory, an unknown host is 422
    resp = rig.http.post("/api/v1/gitops/drift/config", json={"hosts": ["not-a-host-of-it"]})
    assert resp.status_code == 422, resp.text
    assert Path(rig.lab.key).exists()
