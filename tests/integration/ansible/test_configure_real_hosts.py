"""Hardening and a container engine on real SSH hosts, driven through prov's CLI and API.

Verified from outside the target: password and root logins refused, the nft
table loaded in the target's network namespace, net sysctls set, a container
run by the admin user; a second run reports changed=0 on every host.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from provisioner import states as S
from tests.integration.ansible.conftest import Api, ssh
from tests.support import nshost
from tests.support.cli import prov_executable

pytestmark = pytest.mark.integration


def test_harden_and_docker_then_idempotent(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    target = ansible_lab.hosts[0]
    key = ansible_lab.key
    name = f"web-{target.name}"
    prov_api.add_host(name, target.address, rack=f"rack-{target.name}")

    # the baseline really allows what hardening must forbid (else the checks below prove nothing)
    assert ssh(target.address, key, "root", "true").returncode == 0
    assert ssh(target.address, key, nshost.ADMIN_USER, "true", password=nshost.TEST_PASSWORD).returncode == 0

    # first run: the CLI with its live progress view
    t0 = time.monotonic()
    env = {**os.environ, "PROV_URL": prov_api.server.url, "PROV_TOKEN": prov_api.server.token, "COLUMNS": "200"}
    cli = subprocess.run(
        [prov_executable(), "host", "configure", name, "--playbook", "harden", "--playbook", "container-engine",
         "--engine", "docker", "--wait"],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    first = time.monotonic() - t0
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-2000:]
    assert "changed" in cli.stdout and name in cli.stdout
    assert "Install the sshd hardening drop-in" in cli.stdout  # live lines name the task
    assert "configuring -> active" in cli.stdout
    host = prov_api.host(name)
    assert host.state == S.ACTIVE

    # --- hardening, verified from outside ---------------------------------------------
    pw = ssh(target.address, key, nshost.ADMIN_USER, "true", password=nshost.TEST_PASSWORD)
    assert pw.returncode == 255 and "Permission denied (publickey)" in pw.stderr, pw.stderr
    root = ssh(target.address, key, "root", "true")
    assert root.returncode == 255 and "Permission denied" in root.stderr, root.stderr
    nft = target.ns_exec("nft", "list", "table", "inet", "prov_filter")
    assert "policy drop" in nft.stdout and "tcp dport 22 accept" in nft.stdout
    for k, v in {"net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.all.rp_filter": "1",
                 "net.ipv4.tcp_syncookies": "1", "net.ipv4.conf.all.send_redirects": "0"}.items():
        assert target.ns_exec("sysctl", "-n", k).stdout.strip() == v, k
    # modern algorithms only: an old cipher is refused by the server
    weak = subprocess.run(["ssh", "-o", "Ciphers=aes128-cbc", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-i", str(key), f"prov@{target.address}", "true"],
                          capture_output=True, text=True, timeout=30)
    assert weak.returncode == 255 and "no matching cipher" in weak.stderr

    # --- the container engine, used by the admin user -------------------------------------
    run = ssh(target.address, key, nshost.ADMIN_USER,
              "docker run --rm localhost/prov-verify:busybox /bin/echo hello-from-outside")
    assert run.returncode == 0 and run.stdout.strip() == "hello-from-outside", run.stderr

    # --- history: one line per task result, state changes named ----------------------------
    started = re.search(r"task (\d+) started", cli.stdout)
    assert started, cli.stdout[:500]
    task_id = int(started.group(1))
    detail = prov_api.http.get(f"/api/v1/configure/{task_id}").json()
    lines = [e["message"] for e in detail["events"]]
    assert any(m.startswith("ansible: changed: Write daemon.json") for m in lines)
    assert any("skipped auditd" in m for m in lines)  # a stated skip reason, not a silent one
    result = detail["task"]["result"]
    assert result["hosts"][name]["failed"] == 0 and os.path.isdir(result["artifact_dir"])

    # second run, through the rack endpoint: nothing changes
    t0 = time.monotonic()
    resp = prov_api.http.post(f"/api/v1/racks/rack-{target.name}/configure",
                              json={"playbooks": ["harden", "container-engine"], "engine": "docker"})
    assert resp.status_code == 202, resp.text
    task = prov_api.wait(resp.json()["id"])
    second = time.monotonic() - t0
    assert task["status"] == "succeeded", task["error"]
    stats = task["result"]["hosts"][name]
    assert stats["changed"] == 0 and stats["failed"] == 0, stats
    assert prov_api.host(name).state == S.ACTIVE
    print(f"\nharden+docker on one namespace host: first run {first:.0f} s, second run {second:.0f} s")

