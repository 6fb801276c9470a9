from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.gitops import inventory as inv_mod
from provisioner.gitops.inventory import InventoryError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "inventory"

HEADER = "apiVersion: prov/v1\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path) -> str:
    with pytest.raises(InventoryError) as ei:
        inv_mod.load(path)
    return ei.value.message


def test_example_inventory_loads_with_defaults_applied() -> None:
    inv = inv_mod.load(EXAMPLES)
    assert set(inv.hosts) == {"web01", "web02", "kvm01"}
    web01 = inv.hosts["web01"]
    assert web01.profile == "debian12" and web01.state == "configured"  # its own; the default is available
    assert inv.hosts["web02"].state == "available"
    assert web01.bmc is not None and web01.bmc.username == "admin" and web01.bmc.port == 623
    assert web01.bmc.address == "192.0.2.21"  # TEST-NET-1: the example reaches no real BMC
    assert inv.hosts["kvm01"].engine == "podman"
    assert str(inv.origin["hosts/web02"]).startswith(str(EXAMPLES.relative_to(Path.cwd())) if EXAMPLES.is_relative_to(
        Path.cwd()) else str(EXAMPLES))


def test_bad_mac_reports_file_line_and_path(tmp_path: Path) -> None:
    p = write(tmp_path, "rack1.yaml", HEADER + "racks:\n  - name: r1\nhosts:\n"
              "  - name: a1\n    rack: r1\n  - name: a2\n    nics:\n      - mac: 'zz:00'\n")
    msg = error_of(p)
    assert msg.endswith("hosts[1].nics[0].mac: not a MAC address: 'zz:00' (expected aa:bb:cc:dd:ee:ff)")
    assert msg.startswith(f"{p}:9: ") or msg.startswith("rack1.yaml:9: ") or ":9: " in msg


def test_inline_password_is_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, "i.yaml", HEADER + "hosts:\n  - name: a1\n    bmc:\n      address: 10.0.0.1\n"
              "      password: hunter2\n")
    msg = error_of(p)
    assert ":6: hosts[0].bmc.password: inline passwords are not allowed" in msg
    assert "hunter2" not in msg


def test_unknown_field_and_bad_api_version(tmp_path: Path) -> None:
    assert ":3: hosts[0].colour: unknown field" in error_of(
        write(tmp_path, "u.yaml", HEADER + "hosts:\n  - {name: a1, colour: red}\n"))
    assert "apiVersion" in error_of(write(tmp_path, "v.yaml", "apiVersion: prov/v9\n"))


def test_duplicates_across_files_are_rejected(tmp_path: Path) -> None:
    d = tmp_path / "inv"
    d.mkdir()
    write(d, "a.yaml", HEADER + "hosts:\n  - name: a1\n    nics: [{mac: '52:54:00:00:00:01'}]\n")
    write(d, "b.yaml", HEADER + "hosts:\n  - name: b1\n    nics: [{mac: '52-54-00-00-00-01'}]\n")
    msg = error_of(d)
    assert "b.yaml:4: hosts[0].nics[0].mac: 52:54:00:00:00:01 already used by a1" in msg
    write(d, "b.yaml", HEADER + "hosts:\n  - name: a1\n")
    assert "duplicate host 'a1'" in error_of(d)


def test_unknown_references_are_rejected(tmp_path: Path) -> None:
    assert "hosts[0].rack: unknown rack 'nope'" in error_of(
        write(tmp_path, "r.yaml", HEADER + "hosts:\n  - {name: a1, rack: nope}\n"))
    assert "hosts[0].profile: unknown profile 'nope'" in error_of(
        write(tmp_path, "p.yaml", HEADER + "hosts:\n  - {name: a1, profile: nope}\n"))


def test_duplicate_bmc_endpoint_and_two_boot_nics(tmp_path: Path) -> None:
    assert "already used by a1" in error_of(write(tmp_path, "b.yaml", HEADER + "hosts:\n"
        "  - {name: a1, bmc: {address: 10.0.0.1, port: 623}}\n  - {name: a2, bmc: {address: 10.0.0.1, port: 623}}\n"))
    assert "more than one boot NIC" in error_of(write(tmp_path, "n.yaml", HEADER + "hosts:\n  - name: a1\n"
        "    nics: [{mac: '52:54:00:00:00:01', boot: true}, {mac: '52:54:00:00:00:02', boot: true}]\n"))


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    assert ":3: YAML:" in error_of(write(tmp_path, "s.yaml", HEADER + "hosts:\n  - name: [unclosed\n"))


def test_password_refs_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "pw.txt", "s3cret-file\n")
    p = write(tmp_path, "i.yaml", HEADER + "hosts:\n"
              "  - {name: a1, bmc: {address: 10.0.0.1, password: {env: PW_A}}}\n"
              "  - {name: a2, bmc: {address: 10.0.0.2, password: {file: pw.txt}}}\n")
    monkeypatch.setenv("PW_A", "s3cret-env")
    inv = inv_mod.load(p)
    from provisioner.gitops.apply import resolve_passwords

    assert resolve_passwords(inv) == {"a1": "s3cret-env", "a2": "s3cret-file"}
    monkeypatch.delenv("PW_A")
    with pytest.raises(Exception, match=r"hosts/a1: .*PW_A is not set"):
        resolve_passwords(inv)


def test_schema_is_valid_json_schema_and_accepts_the_example() -> None:
    import jsonschema
    import yaml

    schema = inv_mod.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for f in sorted(EXAMPLES.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
    assert json.dumps(schema)
