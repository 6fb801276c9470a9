"""apply's question (issue 19, item 2): "Type yes to apply" on a terminal; off one, --yes for a
plan that installs, starts guests or deletes (exit 11, nothing changed); any other plan goes on."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import provisioner.cli.gitops as cli_gitops
from provisioner.cli import exitcodes
from provisioner.cli.groups import app
from provisioner.cli.output import OutputFormat
from provisioner.gitops import apply as apply_mod
from provisioner.gitops.plan import Action, Plan


def plan_of(*actions: Action) -> Plan:
    return Plan(list(actions), "d" * 64, "w" * 64)


INSTALL = Action("install", "host", "web01", reason="available -> configured")
DELETE = Action("delete", "host", "old01", destructive=True)
GUEST = Action("create-guest", "guest", "vm1", host="kvm01")
UPDATE = Action("update", "host", "web02")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_what_needs_asking() -> None:
    assert cli_gitops.disruptions(plan_of(UPDATE, Action("verify", "host", "x"), Action("configure", "host", "y"))) \
        == []
    assert cli_gitops.disruptions(plan_of(INSTALL, GUEST, DELETE)) == [
        "installs 1 host(s) (web01)", "starts 1 guest(s) (guest/kvm01/vm1)", "deletes 1 object(s) (host/old01)"]
    many = plan_of(*[Action("install", "host", f"h{i}") for i in range(7)])
    assert cli_gitops.disruptions(many) == ["installs 7 host(s) (h0, h1, h2, h3, h4, +2 more)"]


def test_off_a_terminal_only_a_disruptive_plan_needs_yes(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))  # not a terminal: never read
    cli_gitops._confirm(plan_of(UPDATE), False, OutputFormat.table, False)  # goes on
    with pytest.raises(typer.Exit) as ei:
        cli_gitops._confirm(plan_of(UPDATE, INSTALL), False, OutputFormat.table, False)
    assert ei.value.exit_code == exitcodes.NOT_CONFIRMED == 11
    assert capsys.readouterr().err == ("error: the plan installs 1 host(s) (web01): not confirmed (stdin is not a "
                                       "terminal; add --yes to apply without asking)\n")
    cli_gitops._confirm(plan_of(INSTALL), True, OutputFormat.table, False)  # --yes


@pytest.mark.parametrize("answer, goes_on", [("yes\n", True), ("y\n", False), ("YES\n", False), ("", False)])
def test_on_a_terminal_only_yes_goes_on(answer: str, goes_on: bool, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    try:
        cli_gitops._confirm(plan_of(DELETE), False, OutputFormat.table, False)
        went_on = True
    except typer.Exit as exc:
        assert exc.exit_code == exitcodes.NOT_CONFIRMED
        went_on = False
    out = capsys.readouterr()
    assert went_on is goes_on
    assert "- host old01" in out.out  # the plan first
    assert "it deletes 1 object(s) (host/old01)" in out.err and out.err.rstrip().endswith(
        "Type yes to apply:" if goes_on else "nothing was changed")


def test_json_output_keeps_the_plan_off_stdout(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    cli_gitops._confirm(plan_of(INSTALL), False, OutputFormat.json, False)
    out = capsys.readouterr()
    assert out.out == "" and "> host web01 install" in out.err


def test_apply_refuses_before_anything_is_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inv.yaml").write_text("apiVersion: prov/v1\nhosts:\n  - {name: web01, state: installed}\n")
    applied: list[Any] = []

    class Client:
        def __init__(self, **kw: Any) -> None:
            pass

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(cli_gitops, "ProvClient", Client)
    monkeypatch.setattr(apply_mod, "build_plan", lambda *a, **kw: (plan_of(INSTALL), None, {}))
    monkeypatch.setattr(apply_mod, "apply_plan", lambda *a, **kw: applied.append(a))
    r = CliRunner().invoke(app, ["apply", "-f", str(tmp_path / "inv.yaml")])
    assert r.exit_code == 11 and "add --yes" in r.stderr and applied == []
