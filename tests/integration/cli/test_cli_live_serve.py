"""The ``prov`` console script end to end against ``prov serve`` (subprocesses, loopback only)."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.integration.cli.conftest import Run, one_error_line
from tests.support.cli import ServeProcess, prov_executable
from tests.support.helpers import free_port

pytestmark = pytest.mark.integration

PASSWORD = "Int-Secret-Pw-4711"


def test_inventory_round_trip(prov: Run, serve: ServeProcess, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    r = prov("rack", "add", "r1", "--site", "lab")
    assert r.returncode == 0, r.stderr
    r = prov("profile", "add", "debian12", "--install-method", "image", "--image-url", "http://127.0.0.1/x.qcow2")
    assert r.returncode == 0, r.stderr
    r = prov(
        "host",
        "add",
        "web01",
        "--rack",
        "r1",
        "--mac",
        "52:54:00:12:34:56",
        "--bmc-kind",
        "ipmi",
        "--bmc-address",
        "127.0.0.1",
        "--bmc-port",
        str(free_port()),
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        str(pw),
        "--profile",
        "debian12",
        "--role",
        "docker",
        "--u",
        "3",
    )
    assert r.returncode == 0, r.stderr
    assert "web01" in r.stdout

    r = prov("host", "list")
    assert r.returncode == 0 and "web01" in r.stdout and "52:54:00:12:34:56" in r.stdout
    host = json.loads(prov("host", "show", "web01", "--output", "json").stdout)
    assert host["profile"] == "debian12" and host["bmc"]["password_set"] is True and host["roles"] == ["docker"]

    r = prov("host", "set", "web01", "--role", "docker", "--role", "db", "--output", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["roles"] == ["docker", "db"]
    r = prov("host", "maintain", "web01", "--reason", "rma")
    assert r.returncode == 0
    r = prov("host", "history", "web01", "--output", "yaml")
    assert r.returncode == 0
    assert [e["to_state"] for e in yaml.safe_load(r.stdout)][-1] == "maintenance"
    assert prov("host", "unmaintain", "web01").returncode == 0

    f = tmp_path / "rack2.yaml"
    f.write_text(
        textwrap.dedent(f"""\
        apiVersion: prov/v1
        racks: [{{name: r2}}]
        hosts:
          - {{name: db01, rack: r2, nics: [{{mac: "52:54:00:00:02:01"}}], bmc: {{kind: manual}}}}
          - {{name: db02, rack: r2, nics: [{{mac: "52:54:00:00:02:02"}}],
              bmc: {{address: 127.0.0.1, port: {free_port()}, password: {{file: {pw}}}}}}}
        """)
    )
    r = prov("host", "import", str(f), "--output", "json")
    assert r.returncode == 0, r.stderr
    assert [h["name"] for h in json.loads(r.stdout)] == ["db01", "db02"]
    rows = json.loads(prov("host", "list", "--rack", "r2", "--output", "json").stdout)
    assert [h["name"] for h in rows] == ["db01", "db02"]

    assert prov("host", "rm", "db01", "--yes").returncode == 0
    assert prov("host", "show", "db01").returncode == 3

    # the password went in through a file: never in the controller's log or any output
    assert PASSWORD not in serve.log.read_text()


def test_errors_are_one_line_with_exit_codes(prov: Run, serve: ServeProcess) -> None:
    assert prov("rack", "add", "er1").returncode == 0
    assert (
        prov("host", "add", "m1", "--rack", "er1", "--mac", "52:54:00:aa:00:01", "--bmc-kind", "manual").returncode == 0
    )

    r = prov("host", "add", "m2", "--rack", "er1", "--mac", "52:54:00:AA:00:01", "--bmc-kind", "manual")
    assert r.returncode == 4  # duplicate MAC
    assert "52:54:00:aa:00:01" in one_error_line(r)

    r = prov("host", "add", "m3", "--rack", "nosuch")
    assert r.returncode == 2  # unknown rack named in the body: 422 naming the field
    assert one_error_line(r).startswith("error: rack:")

    r = prov("host", "show", "nosuch")
    assert r.returncode == 3
    one_error_line(r)

    r = prov("host", "add", "m4", "--mac", "not-a-mac")
    assert r.returncode == 2
    assert "--mac" in one_error_line(r)

    r = prov("host", "add")
    assert r.returncode == 2
    assert "Missing argument" in one_error_line(r)

    r = prov("rack", "list", env={"PROV_TOKEN": "prov_bogus"})
    assert r.returncode == 5
    one_error_line(r)

    r = prov("rack", "list", env={"PROV_URL": f"http://127.0.0.1:{free_port()}"})
    assert r.returncode == 7  # controller unreachable (6 is a BMC or other peer failing)
    assert "cannot reach the prov controller" in one_error_line(r)


def test_login_then_commands_without_env(prov: Run, serve: ServeProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "client.yaml"
    env = {"PROV_CLIENT_CONFIG": str(cfg)}
    assert prov("rack", "add", "lg1").returncode == 0
    r = prov("login", "--url", serve.url, "--token-stdin", input=serve.token + "\n", env=env)
    assert r.returncode == 0, r.stderr
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    assert oct(cfg.parent.stat().st_mode & 0o777) == "0o700"
    # A fresh process with neither PROV_URL nor PROV_TOKEN: the saved config is used.
    bare = {k: v for k, v in serve.env().items() if k not in ("PROV_URL", "PROV_TOKEN")} | env
    out = subprocess.run(
        [prov_executable(), "rack", "list", "--output", "json"], env=bare, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert any(rack["name"] == "lg1" for rack in json.loads(out.stdout))
