"""``-o table|wide|json|yaml|name|csv``, ``--no-headers``, tables that fit a terminal, plain columns in a pipe,
and the confirmation asked before destroying."""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

import pytest
import typer
from rich.console import Console

import provisioner.cli.power  # noqa: F401  (registers host power)
from provisioner.cli import exitcodes, tables
from provisioner.cli.host import HOST_TABLE
from provisioner.cli.output import confirm
from tests.unit.cli.conftest import Prov, one_error_line


def _mac(uid: str, last: int) -> str:
    return f"52:54:{uid[0:2]}:{uid[2:4]}:{uid[4:6]}:{last:02x}"


@pytest.fixture
def fleet(prov: Prov, uid: str) -> tuple[str, list[str]]:
    rack = f"of-{uid}"
    assert prov("rack", "add", rack, "--site", "room 1").exit_code == 0
    names = [f"of{i}-{uid}" for i in (1, 2)]
    for i, name in enumerate(names, 1):
        r = prov("host", "add", name, "--rack", rack, "--mac", _mac(uid, i), "--bmc-kind", "manual",
                 "--role", "web", "--role", "db")
        assert r.exit_code == 0, r.output
    return rack, names


def test_host_list_in_a_pipe_is_plain_columns(prov: Prov, fleet: tuple[str, list[str]], uid: str) -> None:
    rack, names = fleet
    r = prov("host", "list", "--rack", rack)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "rack", "u", "state", "power", "profile", "roles", "boot_mac", "bmc"]
    assert not any(ch in r.stdout for ch in "│┃━─")  # no frame off a terminal
    rows = [ln.split() for ln in lines[1:]]
    assert [row[0] for row in rows] == names
    assert [row[7] for row in rows] == [_mac(uid, 1), _mac(uid, 2)]  # awk '{print $8}' gets the MACs
    assert all(row[3] == "enrolled" and row[6] == "web,db" for row in rows)

    r = prov("host", "list", "--rack", rack, "--no-headers")
    assert [ln.split()[0] for ln in r.stdout.splitlines()] == names

    r = prov("host", "list", "--rack", rack, "-o", "name")
    assert r.stdout.splitlines() == names

    r = prov("host", "list", "--rack", rack, "-o", "wide")
    head = r.stdout.splitlines()[0].split()
    assert {"id", "macs", "last_error"} <= set(head) and head[:2] == ["name", "rack"]


def test_csv_is_every_column_and_parses(prov: Prov, fleet: tuple[str, list[str]], uid: str) -> None:
    rack, names = fleet
    r = prov("host", "list", "--rack", rack, "-o", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["name"] for row in rows] == names
    assert rows[0]["boot_mac"] == _mac(uid, 1) and rows[0]["bmc"] == "manual" and rows[0]["last_error"] == ""
    r = prov("host", "list", "--rack", rack, "-o", "csv", "--no-headers")
    assert next(csv.reader(io.StringIO(r.stdout)))[0] == names[0]


def test_other_lists_share_the_formats(prov: Prov, fleet: tuple[str, list[str]]) -> None:
    rack, _ = fleet
    assert rack in prov("rack", "list", "-o", "name", "--limit", "1000").stdout.splitlines()
    r = prov("rack", "list", "--site", "room 1", "--no-headers", "--limit", "1000")
    assert r.exit_code == 0 and any(ln.split()[0] == rack for ln in r.stdout.splitlines())
    r = prov("rack", "show", rack)  # an object, then its hosts, in plain text
    assert r.exit_code == 0 and "hosts in " + rack in r.stdout
    r = prov("task", "list", "-o", "csv")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("id,kind,host,status")
    r = prov("profile", "list", "-o", "wide")
    assert r.exit_code == 0


def test_an_empty_list_prints_nothing_in_a_pipe(prov: Prov, uid: str) -> None:
    r = prov("host", "list", "--rack", f"none-{uid}")
    assert r.exit_code == 0 and r.stdout == ""
    r = prov("host", "list", "--rack", f"none-{uid}", "-o", "json")
    assert r.stdout.strip() == "[]"


# --------------------------------------------------------------------------- on a terminal
def _rows(n: int = 3) -> list[dict[str, Any]]:
    return [{"name": f"web{i:02d}.rack-a", "rack": "rack-a", "u": i, "state": "install-failed", "power": "on",
             "profile": "ubuntu-22.04", "roles": ["web", "db"], "boot_mac": f"52:54:00:aa:bb:{i:02x}",
             "bmc": f"ipmi 10.20.30.{i}:623", "id": i, "macs": [f"52:54:00:aa:bb:{i:02x}"],
             "last_error": "BMC 10.20.30.1: no answer within 5 s while powering on", "updated_at": None}
            for i in range(1, n + 1)]


def _draw(rows: list[dict[str, Any]], width: int, *, wide: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    tables.rich_table(rows, HOST_TABLE.pick(wide, rows), headers=True, title=None, console=console,
                      drop=HOST_TABLE.drop, wide=wide)
    return out.getvalue()


@pytest.mark.parametrize("width", [60, 80, 100, 120, 200])
def test_a_terminal_table_fits_and_never_folds_a_mac_or_a_state(width: int) -> None:
    rows = _rows()
    text = _draw(rows, width)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width
    assert len(lines) == len(rows) + 4  # top rule, header, header rule, one line per row, bottom rule
    for row in rows:
        line = next(ln for ln in lines if row["name"] in ln)
        assert "install-failed" in line
        if "boot_mac" in lines[1]:
            assert row["boot_mac"] in line
    if width >= 80:
        assert "boot_mac" in lines[1] and "state" in lines[1]  # an 80-column terminal keeps the MACs


def test_low_value_columns_go_first_and_wide_shows_all() -> None:
    rows = _rows()
    header = _draw(rows, 80).splitlines()[1]
    assert "roles" not in header and "profile" not in header and "name" in header
    wide = _draw(rows, 80, wide=True)
    assert "no answer within 5 s while powering on" in wide and "updated_at" in wide  # nothing cut


def test_free_text_is_shortened_with_an_ellipsis() -> None:
    rows = [{"name": "h1", "state": "verify-failed", "error": "x " * 200}]
    text = _draw_cols(rows, ["name", "state", "error"], 80)
    assert "…" in text and max(len(ln) for ln in text.splitlines()) <= 80 and "verify-failed" in text


def _draw_cols(rows: list[dict[str, Any]], cols: list[str], width: int) -> str:
    out = io.StringIO()
    tables.rich_table(rows, cols, headers=False, title=None,
                      console=Console(file=out, width=width, force_terminal=True, color_system=None))
    return out.getvalue()


# --------------------------------------------------------------------------- confirmation
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_confirm_asks_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", _Tty("y\n"))
    confirm("Delete host h1?", False)  # yes: goes on
    monkeypatch.setattr(sys, "stdin", _Tty("\n"))
    with pytest.raises(typer.Exit) as exc:
        confirm("Delete host h1?", False)  # the default is no
    assert exc.value.exit_code == exitcodes.ERROR
    assert "Delete host h1? [y/N]" in capsys.readouterr().err
    confirm("Delete host h1?", True)  # --yes: never asks


def test_off_a_terminal_a_delete_needs_yes(prov: Prov, fleet: tuple[str, list[str]]) -> None:
    _, names = fleet
    r = prov("host", "rm", names[0])
    assert r.exit_code == exitcodes.ERROR and "--yes" in one_error_line(r)
    assert prov("host", "show", names[0]).exit_code == 0  # nothing was deleted
    assert prov("host", "rm", names[0], "-y").exit_code == 0
    # powering off only asks a person: a script goes on as before (manual BMC: the operator is told)
    r = prov("host", "power", "off", names[1], "-o", "json")
    assert "not confirmed" not in r.stderr
