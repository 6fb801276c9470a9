"""Podman on a real SSH host: root verification in the playbook, rootless use checked from outside."""

from __future__ import annotations

import pytest

from provisioner import states as S
from tests.integration.ansible.conftest import Api, ssh
from tests.support import nshost

pytestmark = pytest.mark.integration


def test_podman_engine(ansible_lab: nshost.Lab, prov_api: Api) -> None:
    target = ansible_lab.hosts[1]
    name = f"pod-{target.name}"
    prov_api.add_host(name, target.address)
    resp = prov_api.http.post(f"/api/v1/hosts/{name}/configure",
                              json={"playbooks": ["container-engine"], "engine": "podman"})
    assert resp.status_code == 202, resp.text
    task = prov_api.wait(resp.json()["id"])
    assert task["status"] == "succeeded", task["error"]
    assert prov_api.host(name).state == S.ACTIVE
    events = prov_api.http.get(f"/api/v1/configure/{task['id']}").json()["events"]
    assert any("podman ran a container: prov container engine ok" in e["message"] for e in events)
    # rootless: the admin user has subordinate IDs and runs its own container
    # (--pid=host: a fresh proc mount is not allowed inside a namespace host)
    subuid = ssh(target.address, ansible_lab.key, nshost.ADMIN_USER, f"grep ^{nshost.ADMIN_USER}: /etc/subuid")
    assert subuid.stdout.strip() == f"{nshost.ADMIN_USER}:100000:65536"
    run = ssh(target.address, ansible_lab.key, nshost.ADMIN_USER,
              "sudo cat /var/lib/prov-verify/busybox-rootfs.tar > /tmp/bb.tar"
              " && podman import -q /tmp/bb.tar localhost/rootless:1 >/dev/null"
              " && podman run --rm --pid=host localhost/rootless:1 /bin/echo rootless-ok",
              timeout=180)
    assert run.returncode == 0 and run.stdout.strip().endswith("rootless-ok"), run.stderr[-1000:]
