"""The playbooks pass ``ansible-playbook --syntax-check`` and ``ansible-lint`` (production profile).

Also: the inventory script works as an Ansible dynamic inventory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOKS = REPO / "provisioner" / "playbooks"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("playbook", ["site.yml", "harden.yml", "container-engine.yml"])
def test_syntax_check(playbook: str) -> None:
    require_binary(str(BIN / "ansible-playbook"))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                           str(PLAYBOOKS / playbook)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile() -> None:
    require_binary(str(BIN / "ansible-lint"))
    proc = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor", "provisioner/playbooks/"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_rhel_vars_exist_for_every_role() -> None:
    for role in ("hardening", "docker", "podman"):
        debian = (PLAYBOOKS / "roles" / role / "vars/Debian.yml").read_text()
        rhel = (PLAYBOOKS / "roles" / role / "vars/RedHat.yml").read_text()
        assert debian.strip() and rhel.strip()


def test_dynamic_inventory_script(tmp_path: Path) -> None:
    require_binary(str(BIN / "ansible-inventory"))
    inv = {"_meta": {"hostvars": {"web01": {"ansible_host": "10.0.0.5", "prov_rack": "r1"}}},
           "all": {"children": ["ungrouped", "rack_r1"]}, "ungrouped": {"hosts": []}, "rack_r1": {"hosts": ["web01"]}}
    fake_prov = tmp_path / "prov"
    script = "#!/bin/sh\n[ \"$1 $2\" = 'inventory ansible' ] || exit 9\n"
    fake_prov.write_text(script + f"cat <<'EOF'\n{json.dumps(inv)}\nEOF\n")
    fake_prov.chmod(0o755)
    proc = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(PLAYBOOKS / "inventory/prov_inventory.sh"),
                           "--list"], capture_output=True, text=True, timeout=60,
                          env={"PROV_BIN": str(fake_prov), "PATH": f"{BIN}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rack_r1"]["hosts"] == ["web01"]
    assert out["_meta"]["hostvars"]["web01"]["ansible_host"] == "10.0.0.5"
