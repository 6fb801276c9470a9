"""The importer's parsing and line bookkeeping, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.cli import import_checks, import_formats


def test_yaml_lines_follow_nested_and_flow_entries() -> None:
    text = (
        "hosts:\n"  # 1
        "  - name: a1\n"  # 2
        "    nics:\n"  # 3
        "      - {mac: '52:54:00:00:00:01'}\n"  # 4
        "      - mac: bogus\n"  # 5
        "  - {name: a2, rack: r9}\n"  # 6
    )
    parsed = import_formats.parse_yaml(text)
    assert [r.line for r in parsed.hosts] == [2, 6]
    assert parsed.hosts[0].line_of("nics[1].mac") == 5
    assert parsed.hosts[0].line_of("nics[0].mac") == 4
    assert parsed.hosts[1].line_of("rack") == 6
    checked = import_checks.check_rows(parsed, Path("."))
    assert len(checked) == 1
    assert [(p.line, p.path) for p in parsed.problems] == [(5, "hosts[0].nics[1].mac")]


def test_a_bare_list_of_hosts_is_accepted() -> None:
    parsed = import_formats.parse_yaml("- name: b1\n- name: b2\n  u: 4\n")
    assert [r.body["name"] for r in parsed.hosts] == ["b1", "b2"]
    assert parsed.hosts[1].line_of("u") == 3
    bodies = import_checks.check_rows(parsed, Path("."))
    assert bodies[1]["body"]["u_position"] == 4


def test_csv_rows_and_password_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSV_PW", "pw-from-env")
    (tmp_path / "pw").write_text("pw-from-file\nignored\n")
    text = (
        "name,macs,boot_mac,bmc_address,bmc_password_env,bmc_password_file,roles\n"
        "c1,52-54-00-00-00-01 52:54:00:00:00:02,52:54:00:00:00:02,127.0.0.1,CSV_PW,,a;b\n"
        "c2,,,127.0.0.2,,pw,\n"
        "c3,52:54:00:00:00:09,52:54:00:00:00:08,,,,\n"
    )
    parsed = import_formats.parse_csv(text)
    bodies = import_checks.check_rows(parsed, tmp_path)
    c1 = bodies[0]["body"]
    assert [n["boot"] for n in c1["nics"]] == [False, True]
    assert c1["bmc"]["password"] == "pw-from-env" and c1["roles"] == ["a", "b"]
    assert bodies[1]["body"]["bmc"]["password"] == "pw-from-file"
    assert [(p.line, p.path) for p in parsed.problems] == [(4, "hosts[2].boot_mac")]


def test_duplicates_inside_the_file() -> None:
    parsed = import_formats.parse_yaml(
        "hosts:\n"
        "  - {name: d1, nics: [{mac: '52:54:00:00:00:01'}], bmc: {address: 10.0.0.1}}\n"
        "  - {name: d1, nics: [{mac: '52:54:00:00:00:01'}], bmc: {address: 10.0.0.1, port: 623}}\n"
    )
    import_checks.check_rows(parsed, Path("."))
    reasons = sorted((p.path, p.reason) for p in parsed.problems)
    assert reasons == [
        ("hosts[1].bmc.address", "BMC 10.0.0.1:623 also on line 2"),
        ("hosts[1].name", "d1 also on line 2"),
        ("hosts[1].nics[0].mac", "52:54:00:00:00:01 also on line 2"),
    ]
