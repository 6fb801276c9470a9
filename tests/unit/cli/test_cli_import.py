from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.support.helpers import free_port
from tests.unit.cli.conftest import Prov


def _mac(uid: str, last: int) -> str:
    return f"52:54:{uid[0:2]}:{uid[2:4]}:{uid[4:6]}:{last:02x}"


def _names(prov: Prov, rack: str) -> list[str]:
    r = prov("host", "list", "--rack", rack, "-o", "json")
    return [h["name"] for h in json.loads(r.stdout)] if r.exit_code == 0 else []


@pytest.fixture
def rack(prov: Prov, uid: str) -> str:
    name = f"im-{uid}"
    assert prov("rack", "add", name).exit_code == 0
    return name


def test_import_yaml_creates_racks_and_hosts(prov: Prov, uid: str, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("filepw\n")
    f = tmp_path / "rack.yaml"
    f.write_text(
        textwrap.dedent(f"""\
        apiVersion: prov/v1
        racks:
          - name: ny-{uid}
            site: dc9
        hosts:
          - name: a-{uid}
            rack: ny-{uid}
            u: 1
            nics: [{{mac: "{_mac(uid, 1)}", boot: true}}]
            bmc: {{kind: ipmi, address: 127.0.0.1, port: {free_port()}, username: admin, password: {{env: IMP_PW}}}}
            roles: [docker]
          - name: b-{uid}
            rack: ny-{uid}
            nics: [{{mac: "{_mac(uid, 2)}"}}]
            bmc: {{kind: ipmi, address: 127.0.0.1, port: {free_port()}, password: {{file: pw}}}}
        """)
    )
    r = prov("host", "import", str(f), "--check", env={"IMP_PW": "envpw"})
    assert r.exit_code == 0, r.output
    assert "2 hosts and 1 new racks would be imported" in r.stdout
    assert prov("rack", "show", f"ny-{uid}").exit_code == 3  # --check wrote nothing

    r = prov("host", "import", str(f), env={"IMP_PW": "envpw"})
    assert r.exit_code == 0, r.output
    assert sorted(_names(prov, f"ny-{uid}")) == [f"a-{uid}", f"b-{uid}"]
    shown = json.loads(prov("host", "show", f"b-{uid}", "-o", "json").stdout)
    assert shown["bmc"]["password_set"] is True and shown["nics"][0]["boot"] is True


def test_import_yaml_reports_every_problem_with_file_line(prov: Prov, uid: str, rack: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent(f"""\
        hosts:
          - name: ok-{uid}
            rack: {rack}
            nics:
              - mac: "{_mac(uid, 3)}"
          - name: Bad_Name
            rack: {rack}
          - name: dup-{uid}
            nics:
              - mac: "52:54:00:zz:00:01"
          - name: pw-{uid}
            bmc:
              address: 127.0.0.1
              password: inline-secret
          - name: ur-{uid}
            rack: nosuch-{uid}
            nics:
              - mac: "{_mac(uid, 3)}"
        """)
    )
    r = prov("host", "import", str(f))
    assert r.exit_code == 2, r.output
    err = r.stderr.splitlines()
    assert f"{f}:6: hosts[1].name: not a valid host name: 'Bad_Name'" in err[0] or any(
        ln.startswith(f"{f}:6: hosts[1].name:") for ln in err
    )
    assert any(ln.startswith(f"{f}:10: hosts[2].nics[0].mac: not a MAC address") for ln in err), err
    assert any(ln.startswith(f"{f}:14: hosts[3].bmc.password: inline passwords are refused") for ln in err), err
    assert any(ln.startswith(f"{f}:18: hosts[4].nics[0].mac:") and "also on line 5" in ln for ln in err), err
    assert err[-1] == f"error: {f}: 4 problems found; nothing was imported"
    assert "inline-secret" not in r.output
    assert _names(prov, rack) == []


def test_import_checks_the_server_all_or_nothing(prov: Prov, uid: str, rack: str, tmp_path: Path) -> None:
    assert (
        prov("host", "add", f"old-{uid}", "--rack", rack, "--mac", _mac(uid, 9), "--bmc-kind", "manual").exit_code == 0
    )
    f = tmp_path / "hosts.csv"
    f.write_text(
        "name,rack,u,macs,bmc_kind,profile,roles\n"
        f"n1-{uid},{rack},3,{_mac(uid, 10)},manual,,web;db\n"
        f"n2-{uid},{rack},4,{_mac(uid, 9)},manual,,\n"
        f"n3-{uid},nosuch-{uid},,{_mac(uid, 11)},manual,,\n"
        f"n4-{uid},{rack},,{_mac(uid, 12)},manual,nosuchprofile-{uid},\n"
    )
    r = prov("host", "import", str(f))
    assert r.exit_code == 2, r.output
    err = r.stderr.splitlines()
    assert any(ln.startswith(f"{f}:3: hosts[1].nics[0].mac: MAC {_mac(uid, 9)} already") for ln in err), err
    assert any(ln.startswith(f"{f}:4: hosts[2].rack: rack 'nosuch-{uid}' not found") for ln in err), err
    assert any(ln.startswith(f"{f}:5: hosts[3].profile: profile") for ln in err), err
    assert _names(prov, rack) == [f"old-{uid}"]  # nothing imported

    f.write_text(
        "name,rack,u,macs,bmc_kind,roles\n"
        f"n1-{uid},{rack},3,{_mac(uid, 10)} {_mac(uid, 13)},manual,web;db\n"
        f"n2-{uid},{rack},4,{_mac(uid, 14)},manual,\n"
    )
    r = prov("host", "import", str(f), "-o", "json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert [h["name"] for h in created] == [f"n1-{uid}", f"n2-{uid}"]
    assert created[0]["roles"] == ["web", "db"] and len(created[0]["nics"]) == 2


def test_import_bad_files(prov: Prov, tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("hosts:\n  - name: [unclosed\n")
    r = prov("host", "import", str(f))
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {f}:") and "not valid YAML" in r.stderr
    r = prov("host", "import", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2 and "missing.yaml" in r.stderr
    c = tmp_path / "x.csv"
    c.write_text("host,mac\nweb1,aa\n")
    r = prov("host", "import", str(c))
    assert r.exit_code == 2 and "'name' is required" in r.stderr


def test_import_rolls_back_when_the_server_refuses_a_row(prov: Prov, uid: str, tmp_path: Path) -> None:
    # U20 in a 10U rack passes the file checks; the API refuses it on the second host,
    # after the rack and the first host were created: both must be gone again.
    f = tmp_path / "rb.yaml"
    f.write_text(
        textwrap.dedent(f"""\
        racks: [{{name: rb-{uid}, size_u: 10}}]
        hosts:
          - {{name: rb1-{uid}, rack: rb-{uid}, u: 2, bmc: {{kind: manual}}}}
          - {{name: rb2-{uid}, rack: rb-{uid}, u: 20, bmc: {{kind: manual}}}}
        """)
    )
    r = prov("host", "import", str(f))
    assert r.exit_code == 2, r.output
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {f}:4: hosts[1]: u_position:") and "rolled back" in line
    assert prov("host", "show", f"rb1-{uid}").exit_code == 3
    assert prov("rack", "show", f"rb-{uid}").exit_code == 3
