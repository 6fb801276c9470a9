from __future__ import annotations

import json
import stat
from pathlib import Path

import yaml

from tests.support.cli import LiveServer
from tests.unit.cli.conftest import Prov, one_error_line


def test_profile_add_list_show_set_rm(prov: Prov, uid: str) -> None:
    name = f"deb-{uid}"
    r = prov(
        "profile",
        "add",
        name,
        "--install-method",
        "image",
        "--image-url",
        "http://x/img.qcow2",
        "--param",
        "disk=/dev/vda",
        "--param",
        "swap=512",
        "--playbook",
        "harden",
        "-o",
        "json",
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["params"] == {"disk": "/dev/vda", "swap": 512} and data["playbooks"] == ["harden"]
    r = prov("profile", "list")
    assert r.exit_code == 0 and name in r.stdout
    r = prov("profile", "set", name, "--container-engine", "podman", "-o", "yaml")
    assert r.exit_code == 0 and yaml.safe_load(r.stdout)["container_engine"] == "podman"
    r = prov("profile", "set", name, "--container-engine", "lxc")
    assert r.exit_code == 2 and "--container-engine" in one_error_line(r)
    r = prov("profile", "add", name)
    assert r.exit_code == 4
    one_error_line(r)
    r = prov("profile", "add", f"x-{uid}", "--image-checksum", "md5:abc")
    assert r.exit_code == 2 and "image_checksum" in one_error_line(r)
    assert prov("profile", "show", name).exit_code == 0
    assert prov("profile", "rm", name, "--yes").exit_code == 0
    assert prov("profile", "show", name).exit_code == 3


def test_task_list_and_show(prov: Prov) -> None:
    r = prov("task", "list", "-o", "json")
    assert r.exit_code == 0 and isinstance(json.loads(r.stdout), list)
    r = prov("task", "show", "987654321")
    assert r.exit_code == 3
    one_error_line(r)


def test_login_writes_private_config(prov: Prov, live_api: LiveServer, tmp_path: Path, uid: str) -> None:
    cfg = tmp_path / "client.yaml"
    no_env: dict[str, str | None] = {"PROV_URL": None, "PROV_TOKEN": None}
    r = prov("login", "--url", live_api.url, "--token-stdin", input="prov_wrong\n", env=no_env)
    assert r.exit_code == 5
    one_error_line(r)
    assert not cfg.exists()

    r = prov("login", "--url", live_api.url, "--token-stdin", input=live_api.token + "\n", env=no_env)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert yaml.safe_load(cfg.read_text()) == {
        "current": "default", "profiles": {"default": {"url": live_api.url, "token": live_api.token}}}
    assert live_api.token not in r.output

    # later commands use the saved URL and token
    r = prov("rack", "add", f"lg-{uid}", env=no_env)
    assert r.exit_code == 0, r.output

    r = prov("login", "--url", "ftp://nope", "--token", "x", env=no_env)
    assert r.exit_code == 2 and "--url" in one_error_line(r)


def test_task_cancel_unknown_or_unsupported_is_one_line(prov: Prov) -> None:
    r = prov("task", "cancel", "987654321")
    assert r.exit_code != 0
    one_error_line(r)
