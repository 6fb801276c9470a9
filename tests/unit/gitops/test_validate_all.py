"""``prov inventory validate`` reports every problem of every file in one run (issue 19, item 3).

Three mistakes used to take three runs: the loader stopped at the first duplicate or unknown
reference. Each problem is FILE:LINE: field: reason, and ``-o json`` lists them as objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import provisioner.cli.gitops  # noqa: F401  (registers the commands)
from provisioner.cli.groups import app
from provisioner.gitops import inventory as inv_mod
from provisioner.gitops.inventory import InventoryError

HEADER = "apiVersion: prov/v1\n"
A = HEADER + """\
racks:
  - {name: r1}
hosts:
  - {name: a1, rack: r1, nics: [{mac: "52:54:00:00:00:01"}]}
  - {name: a2, rack: nope, nics: [{mac: "52:54:00:00:00:01"}]}
  - {name: a1, rack: r1}
"""
B = HEADER + """\
racks:
  - {name: r1}
  - {name: r9, size_u: 500}
hosts:
  - {name: b1, rack: r9, profile: missing, bmc: {address: 10.0.0.1, port: 623}}
  - {name: b2, colour: red, bmc: {address: 10.0.0.1, port: 623}}
  - {name: b3, bmc: {address: 10.0.0.1, port: 623}}
"""
EXPECTED = [
    "a.yaml:6: hosts[1].rack: unknown rack 'nope'",
    "a.yaml:6: hosts[1].nics[0].mac: 52:54:00:00:00:01 already used by a1",
    "a.yaml:7: hosts[2].name: duplicate host 'a1' (first at inv/a.yaml:5)",
    "b.yaml:3: racks[0].name: duplicate rack 'r1' (first at inv/a.yaml:3)",
    "b.yaml:4: racks[1].size_u: Input should be less than or equal to 100",
    "b.yaml:6: hosts[0].profile: unknown profile 'missing'",
    "b.yaml:7: hosts[1].colour: unknown field",
    "b.yaml:8: hosts[2].bmc.address: 10.0.0.1:623 already used by b1",  # hosts[2]: b2 (invalid) keeps [1]
]


@pytest.fixture
def inv_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "inv"
    d.mkdir()
    (d / "a.yaml").write_text(A)
    (d / "b.yaml").write_text(B)
    return d


def test_every_problem_of_every_file_at_once(inv_dir: Path) -> None:
    with pytest.raises(InventoryError) as ei:
        inv_mod.load(inv_dir)
    got = [line.removeprefix("inv/") for line in ei.value.details["errors"]]
    assert got == EXPECTED
    # r9 is invalid (size_u), so b1's "rack: r9" is not reported again as unknown
    assert not any("unknown rack 'r9'" in line for line in got)
    assert ei.value.message == "inv/" + EXPECTED[0]


def test_validate_prints_each_and_json_lists_them(inv_dir: Path) -> None:
    r = CliRunner().invoke(app, ["inventory", "validate", "inv"])
    assert r.exit_code == 1
    assert [ln.removeprefix("error: inv/") for ln in r.stderr.splitlines()] == EXPECTED
    r = CliRunner().invoke(app, ["inventory", "validate", "inv", "-o", "json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and len(doc["errors"]) == len(EXPECTED)
    assert doc["errors"][0] == {"file": "inv/a.yaml", "line": 6, "field": "hosts[1].rack",
                                "reason": "unknown rack 'nope'"}


def test_validate_json_of_a_good_inventory(tmp_path: Path) -> None:
    p = tmp_path / "ok.yaml"
    p.write_text(HEADER + "racks:\n  - {name: r1}\nhosts:\n  - {name: h1, rack: r1}\n")
    r = CliRunner().invoke(app, ["inventory", "validate", str(p), "-o", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"ok": True, "errors": [], "racks": 1, "hosts": 1,
                                                          "profiles": 0}
    r = CliRunner().invoke(app, ["inventory", "validate", str(p)])
    assert r.stdout == "ok: 1 racks, 1 hosts, 0 profiles\n"


def test_a_yaml_error_in_one_file_does_not_hide_the_others(inv_dir: Path) -> None:
    (inv_dir / "a.yaml").write_text(HEADER + "hosts:\n  - name: [unclosed\n")
    with pytest.raises(InventoryError) as ei:
        inv_mod.load(inv_dir)
    errors = ei.value.details["errors"]
    assert errors[0].startswith("inv/a.yaml:3: YAML:")
    assert any(e.startswith("inv/b.yaml:7: hosts[1].colour") for e in errors)
