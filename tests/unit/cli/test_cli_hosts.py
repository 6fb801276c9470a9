from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import free_port
from tests.unit.cli.conftest import Prov, one_error_line

PASSWORD = "s3cret-Pw-not-in-output"


def _mac(uid: str, last: int = 1) -> str:
    h = uid[:6]
    return f"52:54:{h[0:2]}:{h[2:4]}:{h[4:6]}:{last:02x}"


@pytest.fixture
def rack(prov: Prov, uid: str) -> str:
    name = f"rk-{uid}"
    assert prov("rack", "add", name).exit_code == 0
    return name


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    p = tmp_path / "bmc.pw"
    p.write_text(PASSWORD + "\n")
    return p


def _add(prov: Prov, name: str, rack: str, mac: str, pwfile: Path, *extra: str, port: int = 623):
    return prov(
        "host",
        "add",
        name,
        "--rack",
        rack,
        "--mac",
        mac,
        "--bmc-kind",
        "ipmi",
        "--bmc-address",
        "127.0.0.1",
        "--bmc-port",
        str(port),
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        str(pwfile),
        *extra,
    )


@pytest.fixture
def host(prov: Prov, uid: str, rack: str, pwfile: Path) -> str:
    name = f"web-{uid}"
    r = _add(
        prov, name, rack, _mac(uid).upper(), pwfile, "--u", "10", "--role", "docker", "--role", "web", port=free_port()
    )
    assert r.exit_code == 0, r.output
    assert PASSWORD not in r.output
    return name


def test_host_add_and_show(prov: Prov, uid: str, rack: str, host: str) -> None:
    r = prov("host", "show", host, "-o", "json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["rack"] == rack and data["u_position"] == 10
    assert data["nics"] == [{"mac": _mac(uid), "name": "", "boot": True, "ip": None, "address": None, "gateway": None,
                             "nameservers": [], "search": [], "mtu": None}]
    assert data["bmc"]["password_set"] is True
    assert data["roles"] == ["docker", "web"]
    assert PASSWORD not in r.stdout
    r = prov("host", "show", host)
    assert r.exit_code == 0 and "password_set" in r.stdout and PASSWORD not in r.stdout


def test_host_list_filters(prov: Prov, uid: str, rack: str, host: str) -> None:
    r = prov("host", "list", "--rack", rack)
    assert r.exit_code == 0 and host in r.stdout and _mac(uid) in r.stdout, r.output
    r = prov("host", "list", "--rack", rack, "-o", "yaml")
    assert [h["name"] for h in yaml.safe_load(r.stdout)] == [host], r.output
    assert json.loads(prov("host", "list", "--role", "nosuchrole", "--rack", rack, "-o", "json").stdout) == []
    assert prov("host", "add", f"zz-{uid}", "--rack", rack, "--bmc-kind", "manual").exit_code == 0
    r = prov("host", "list", "--rack", rack, "--limit", "1", "--all", "-o", "json")
    assert [h["name"] for h in json.loads(r.stdout)] == [host, f"zz-{uid}"], r.output
    r = prov("host", "list", "--rack", rack, "--limit", "1")
    assert r.exit_code == 0 and "1 of 2 hosts shown" in r.stdout, r.output
    r = prov("host", "list", "--state", "no-such-state")
    assert r.exit_code == 2, r.output
    assert "state" in one_error_line(r)


def test_host_set(prov: Prov, host: str) -> None:
    r = prov("host", "set", host, "--add-role", "db", "--rm-role", "web", "--u", "12", "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["roles"] == ["docker", "db"] and data["u_position"] == 12
    r = prov("host", "set", host, "--bmc-password-env", "PW_FOR_TEST", env={"PW_FOR_TEST": "another-pw"})
    assert r.exit_code == 0, r.output
    r = prov("host", "set", host)
    assert r.exit_code == 2 and "nothing to change" in one_error_line(r)


def test_host_history_and_rm(prov: Prov, host: str) -> None:
    r = prov("host", "history", host)
    assert r.exit_code == 0 and "from_state" in r.stdout and "enroll" in r.stdout
    assert prov("host", "rm", host, "--yes").exit_code == 0
    r = prov("host", "show", host)
    assert r.exit_code == 3
    assert host in one_error_line(r)


def test_password_from_stdin_and_never_as_argument(prov: Prov, uid: str, rack: str) -> None:
    r = prov(
        "host",
        "add",
        f"st-{uid}",
        "--rack",
        rack,
        "--bmc-address",
        "127.0.0.1",
        "--bmc-port",
        str(free_port()),
        "--bmc-password-stdin",
        "-o",
        "json",
        input=PASSWORD + "\n",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bmc"]["password_set"] is True
    r = prov("host", "add", f"ar-{uid}", "--bmc-password", PASSWORD)
    assert r.exit_code == 2  # no such option: a password on the command line is refused
    r = prov("host", "add", f"tw-{uid}", "--bmc-password-env", "X", "--bmc-password-stdin", env={"X": "y"})
    assert r.exit_code == 2
    assert "only one" in one_error_line(r)
    r = prov("host", "add", f"nv-{uid}", "--bmc-password-env", "PROV_NO_SUCH_VAR")
    assert r.exit_code == 2 and "PROV_NO_SUCH_VAR" in one_error_line(r)


def test_maintain_unmaintain_abort(prov: Prov, uid: str, rack: str) -> None:
    name = f"mt-{uid}"
    assert prov("host", "add", name, "--rack", rack, "--bmc-kind", "manual").exit_code == 0
    r = prov("host", "maintain", name, "--reason", "disk swap")
    assert r.exit_code == 0 and "maintenance" in r.stdout
    r = prov("host", "unmaintain", name, "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["state"] == "enrolled"
    r = prov("host", "abort", name)  # nothing to abort in "enrolled"
    assert r.exit_code == 4
    assert "enrolled" in one_error_line(r)
    events = json.loads(prov("host", "history", name, "-o", "json").stdout)
    assert any(e["to_state"] == "maintenance" and "disk swap" in e["message"] for e in events)


def test_bad_input_is_one_line_with_exit_code(prov: Prov, uid: str, rack: str, pwfile: Path) -> None:
    r = prov("host", "add", f"bm-{uid}", "--mac", "52:54:00:zz:00:01")
    assert r.exit_code == 2
    assert "--mac" in one_error_line(r)
    r = prov("host", "add", "-bad-name-")
    assert r.exit_code == 2
    r = prov("host", "add", f"bn-{uid}", "--bmc-address", "bmc_host!", "--bmc-kind", "manual")
    assert r.exit_code == 2 and "--bmc-address" in one_error_line(r)

    # unknown rack: the API answers 422 naming the field (invalid reference in the body) -> exit 2
    r = prov("host", "add", f"ur-{uid}", "--rack", f"nosuch-{uid}")
    assert r.exit_code == 2
    assert one_error_line(r).startswith("error: rack: unknown rack")

    # duplicate MAC across hosts: 409 -> exit 4
    assert _add(prov, f"d1-{uid}", rack, _mac(uid, 7), pwfile, port=free_port()).exit_code == 0
    r = _add(prov, f"d2-{uid}", rack, _mac(uid, 7), pwfile, port=free_port())
    assert r.exit_code == 4
    assert _mac(uid, 7) in one_error_line(r)


def test_server_down_and_bad_token(prov: Prov) -> None:
    r = prov("host", "list", env={"PROV_URL": f"http://127.0.0.1:{free_port()}"})
    assert r.exit_code == 7  # controller unreachable: not a peer's (BMC's) failure, which is 6
    assert "cannot reach" in one_error_line(r)
    r = prov("rack", "list", env={"PROV_TOKEN": "prov_wrong"})
    assert r.exit_code == 5
    one_error_line(r)
