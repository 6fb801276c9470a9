"""Login profiles: `prov login --profile NAME`, PROV_PROFILE, `prov context list|use|rm`, the old file format."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import yaml

from tests.support.cli import LiveServer
from tests.support.helpers import free_port
from tests.unit.cli.conftest import Prov, one_error_line

NO_ENV: dict[str, str | None] = {"PROV_URL": None, "PROV_TOKEN": None, "PROV_PROFILE": None}


def test_two_controllers_side_by_side(prov: Prov, live_api: LiveServer, tmp_path: Path, uid: str) -> None:
    cfg = tmp_path / "client.yaml"
    dead = f"http://127.0.0.1:{free_port()}"
    r = prov("login", "--profile", "lab", "--url", live_api.url, "--token-stdin", input=live_api.token + "\n",
             env=NO_ENV)
    assert r.exit_code == 0, r.output
    assert "profile lab" in r.stdout and live_api.token not in r.output
    r = prov("login", "--profile", "prod", "--url", dead, "--no-verify", "--token-stdin", input="prov_other\n",
             env=NO_ENV)
    assert r.exit_code == 0, r.output
    data = yaml.safe_load(cfg.read_text())
    assert data["current"] == "prod" and set(data["profiles"]) == {"lab", "prod"}
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600

    # the current profile (prod) is down; PROV_PROFILE picks another for one command
    assert prov("rack", "list", env=NO_ENV).exit_code == 7
    assert prov("rack", "add", f"pf-{uid}", env={**NO_ENV, "PROV_PROFILE": "lab"}).exit_code == 0

    r = prov("context", "list", "-o", "json", env=NO_ENV)
    rows = json.loads(r.stdout)
    assert [(c["name"], c["current"]) for c in rows] == [("lab", False), ("prod", True)]
    assert "prov_other" not in r.stdout and live_api.token not in r.stdout

    assert prov("context", "use", "lab", env=NO_ENV).exit_code == 0
    assert prov("rack", "show", f"pf-{uid}", env=NO_ENV).exit_code == 0
    r = prov("context", "use", "nope", env=NO_ENV)
    assert r.exit_code == 3 and "nope" in one_error_line(r)

    r = prov("rack", "list", env={**NO_ENV, "PROV_PROFILE": "staging"})
    assert r.exit_code == 2 and "staging" in one_error_line(r)

    assert prov("context", "rm", "lab", env=NO_ENV).exit_code == 0
    assert yaml.safe_load(cfg.read_text())["current"] == "prod"


def test_the_single_controller_file_still_works(prov: Prov, live_api: LiveServer, tmp_path: Path) -> None:
    cfg = tmp_path / "client.yaml"
    cfg.write_text(yaml.safe_dump({"url": live_api.url, "token": live_api.token}))
    cfg.chmod(0o600)
    assert prov("rack", "list", env=NO_ENV).exit_code == 0
    r = prov("context", "list", "-o", "name", env=NO_ENV)
    assert r.stdout.split() == ["default"]
    # a later login keeps it, as the default profile, next to the new one
    r = prov("login", "--profile", "second", "--url", live_api.url, "--token-stdin", input=live_api.token + "\n",
             env=NO_ENV)
    assert r.exit_code == 0, r.output
    assert set(yaml.safe_load(cfg.read_text())["profiles"]) == {"default", "second"}
