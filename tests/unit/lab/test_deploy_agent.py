"""templates/deploy/agent.sh.j2 renders to a valid busybox script with every value quoted."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from typing import Any

import pytest

from provisioner.errors import TemplateError
from provisioner.render import render
from tests.support.helpers import assert_golden

SHA = "ab" * 32


def agent_context(**over: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "base_url": "http://10.0.2.2:8700",
        "token": "tok-123",
        "nic": {"mac": "52:54:00:AA:00:01", "name": "eth0"},
        "urls": {"events": "http://10.0.2.2:8700/install/v1/tok-123/events"},
        "host": {"name": "node1", "hostname": "node1", "fqdn": "node1.lab.example"},
        "profile": {"name": "debian12-image"},
        "install": {
            "admin_user": "prov",
            "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests prov@test"],
            "disk": "/dev/vda",
            "proxy": "",
        },
        "image": {"url": "http://10.0.2.2:8700/images/debian12.raw", "sha256": SHA, "size": 1048576, "format": "raw"},
        "deploy": {"instance_id": "prov-node1-42", "after": "poweroff", "on_error": "poweroff"},
    }
    for key, value in over.items():
        ctx[key] = value
    return ctx


def test_agent_matches_golden() -> None:
    assert_golden("deploy/agent.sh", render("deploy/agent.sh.j2", agent_context()))


@pytest.mark.parametrize("shell", ["busybox", "dash"])
def test_agent_is_valid_shell(tmp_path, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    script = tmp_path / "agent.sh"
    script.write_text(render("deploy/agent.sh.j2", agent_context()))
    cmd = [shell, "sh", "-n", str(script)] if shell == "busybox" else [shell, "-n", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_hostile_values_stay_data() -> None:
    ctx = agent_context()
    ctx["host"] = {"name": "x", "hostname": "x'; reboot -f; '", "fqdn": "x.example"}
    ctx["image"] = dict(ctx["image"], url="http://h/i.raw$(poweroff)")
    out = render("deploy/agent.sh.j2", ctx)
    assert "IMAGE_URL='http://h/i.raw$(poweroff)'" in out
    # The seed files reach the script as one single-quoted word each.
    user_data = render("deploy/nocloud/user-data.j2", ctx)
    assert f"printf '%s' {shlex.quote(user_data)} >" in out


def test_seed_is_json_in_yaml() -> None:
    out = render("deploy/nocloud/user-data.j2", agent_context())
    assert out.startswith("#cloud-config\n")
    assert 'ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests prov@test"]' in out
    assert "ssh_pwauth: false" in out
    net = render("deploy/nocloud/network-config.j2", agent_context())
    assert 'macaddress: "52:54:00:aa:00:01"' in net


def test_missing_image_size_is_named() -> None:
    ctx = copy.deepcopy(agent_context())
    del ctx["image"]["size"]
    with pytest.raises(TemplateError, match="size"):
        render("deploy/agent.sh.j2", ctx)
