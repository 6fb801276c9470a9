"""Validation and result logic of the ansible-runner driver (no Ansible process started)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from provisioner.drivers.config import ansible
from provisioner.drivers.config.ansible import HostResult, RunResult
from provisioner.errors import ConfigRunError, InvalidInput
from provisioner.settings import Settings


def test_unknown_playbook_is_rejected_by_name() -> None:
    with pytest.raises(InvalidInput) as exc:
        ansible.validate_playbooks(["harden", "rm-rf"])
    assert "rm-rf" in exc.value.message and "container-engine" in exc.value.message
    assert ansible.validate_playbooks(["harden", "harden", "site"]) == ["harden", "site"]
    with pytest.raises(InvalidInput):
        ansible.validate_playbooks([])


def test_engine_and_vars_validation() -> None:
    assert ansible.validate_engine("podman") == "podman"
    with pytest.raises(InvalidInput):
        ansible.validate_engine("lxc")
    assert ansible.validate_vars({"hardening_auditd": False}) == {"hardening_auditd": False}
    for bad in ("ansible_ssh_private_key_file", "prov", "Bad-Name", "x" * 70):
        with pytest.raises(InvalidInput):
            ansible.validate_vars({bad: 1})


def test_result_names_the_failing_host_and_task() -> None:
    r = RunResult(
        status="failed", rc=2, artifact_dir="/a", duration=1.0,
        hosts={"web01": HostResult(ok=3, failed=1, failed_task="Install nftables", message="no package"),
               "web02": HostResult(ok=5, changed=2)},
        failures=[{"host": "web01", "task": "Install nftables", "status": "failed", "message": "no package"}],
    )
    assert not r.ok
    assert r.summary() == "host web01: task 'Install nftables' failed: no package"
    assert r.hosts["web01"].status == "failed" and r.hosts["web02"].status == "changed"
    with pytest.raises(ConfigRunError) as exc:
        ansible.raise_for_result(r)
    assert exc.value.details["failures"][0]["host"] == "web01"
    d = r.to_dict()
    assert d["hosts"]["web02"]["changed"] == 2 and d["artifact_dir"] == "/a"


def test_unreachable_wins_over_failed() -> None:
    assert HostResult(failed=1, unreachable=1).status == "unreachable"
    assert HostResult(ok=4).status == "ok"


def test_key_files_are_private(tmp_path: Path) -> None:
    target = tmp_path / "ssh" / "id"
    old = os.umask(0)
    try:
        ansible._write(target, "secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_controller_key_is_created_once(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    key = ansible.ensure_ssh_key(s)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert ansible.public_key(key).startswith("ssh-ed25519 ")
    assert ansible.ensure_ssh_key(s) == key
    missing = Settings(data_dir=tmp_path, ansible_ssh_key=tmp_path / "nope")
    with pytest.raises(ConfigRunError):
        ansible.ensure_ssh_key(missing)


def test_main_playbook_imports_shipped_files(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    text = ansible._main_playbook(s, ["harden", "container-engine"])
    assert str((s.playbooks_dir / "harden.yml").resolve()) in text
    assert "container-engine.yml" in text
