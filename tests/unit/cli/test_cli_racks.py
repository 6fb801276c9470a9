from __future__ import annotations

import json

import yaml

from tests.unit.cli.conftest import Prov, one_error_line


def test_rack_add_list_show_rm(prov: Prov, uid: str) -> None:
    name = f"r-{uid}"
    r = prov("rack", "add", name, "--site", "dc1", "--size-u", "48", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["size_u"] == 48

    r = prov("rack", "list")
    assert r.exit_code == 0 and name in r.stdout

    r = prov("rack", "list", "-o", "yaml")
    assert any(row["name"] == name for row in yaml.safe_load(r.stdout))

    r = prov("rack", "show", name)
    assert r.exit_code == 0 and "dc1" in r.stdout and "no hosts" in r.stdout

    r = prov("rack", "rm", name, "--yes")
    assert r.exit_code == 0
    r = prov("rack", "show", name)
    assert r.exit_code == 3
    assert "not found" in one_error_line(r)


def test_rack_duplicate_is_conflict(prov: Prov, uid: str) -> None:
    assert prov("rack", "add", f"d-{uid}").exit_code == 0
    r = prov("rack", "add", f"d-{uid}")
    assert r.exit_code == 4
    one_error_line(r)


def test_rack_bad_name_is_invalid_input(prov: Prov) -> None:
    r = prov("rack", "add", "Bad Name!")
    assert r.exit_code == 2
    assert "name" in one_error_line(r)
