"""Help on every command and option, values named and choices listed, one --wait default, --yes where it destroys.

And the start-up budget: building the whole command tree (what ``prov --version``,
``--help`` and each TAB of completion do) imports none of the heavy libraries.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import choices
from provisioner.cli.main import app, build


def _walk(cmd: Any, path: tuple[str, ...] = ("prov",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, (*path, name))


TREE = list(_walk(build()))


def _param(path: tuple[str, ...], opt: str) -> Any:
    cmd = dict(TREE)[path]
    return next((p for p in cmd.params if opt in getattr(p, "opts", ())), None)


def test_every_command_and_option_has_help() -> None:
    missing = [" ".join(path) for path, cmd in TREE if not (cmd.help or "").strip()]
    missing += [f"{' '.join(path)} {p.opts[0] if getattr(p, 'opts', None) else p.name}"
                for path, cmd in TREE for p in cmd.params if not (getattr(p, "help", None) or "").strip()]
    assert not missing, missing
    assert len(TREE) > 60 and sum(len(c.params) for _, c in TREE) > 250  # the walk really saw the tree


def test_help_names_values_instead_of_python_types(capsys: pytest.CaptureFixture[str]) -> None:
    root = TREE[0][1]
    for path, _ in TREE:
        assert root.main(args=[*path[1:], "--help"], prog_name="prov", standalone_mode=False) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage: " + " ".join(path)), out
        for label in ("<str>", "<bool>", "<int>", "<float>", "<list[", "<path>", "<file>"):
            assert label not in out, f"{' '.join(path)} --help shows {label}:\n{out}"


def test_fixed_values_are_choices_in_help() -> None:
    out = CliRunner().invoke(app, ["host", "add", "--help"]).stdout
    assert "--bmc-kind <ipmi|redfish|libvirt|manual>" in out and "--rack RACK" in out
    out = CliRunner().invoke(app, ["profile", "add", "--help"]).stdout
    for text in ("<kickstart|preseed|autoinstall|image>", "<docker|podman|none>", "<site|harden|container-engine>",
                 "<debian|ubuntu|rhel>"):
        assert text in out, text
    assert "<table|wide|json|yaml|name|csv>" in CliRunner().invoke(app, ["rack", "list", "--help"]).stdout
    r = CliRunner().invoke(app, ["host", "add", "h1", "--bmc-kind", "ilo"])
    assert r.exit_code == 2 and "ilo" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _literal(name: str) -> set[str]:
    from provisioner import schemas

    return set(typing.get_args(getattr(schemas, name)))


def test_choices_mirror_the_api() -> None:
    from provisioner import states, templates_catalog
    from provisioner.drivers.config.ansible import PLAYBOOKS

    assert {c.value for c in choices.BmcKind} == _literal("BmcKind")
    assert {c.value for c in choices.OsFamily} == _literal("OsFamily")
    assert {c.value for c in choices.InstallMethod} == _literal("InstallMethod")
    assert {c.value for c in choices.ContainerEngine} == _literal("ContainerEngine")
    assert {c.value for c in choices.HostState} == set(states.ALL)
    assert {c.value for c in choices.PowerState} == {p.value for p in states.PowerState}
    assert {c.value for c in choices.TaskStatus} == {states.TASK_PENDING, states.TASK_RUNNING, *states.TASK_DONE}
    assert {c.value for c in choices.TemplateKind} == set(templates_catalog.KINDS)
    assert {c.value for c in choices.Playbook} == set(PLAYBOOKS)


def test_one_wait_default() -> None:
    """Every command that starts controller work waits for it unless told --no-wait."""
    waits = [(path, p) for path, cmd in TREE for p in cmd.params if "--wait" in getattr(p, "opts", ())]
    assert len(waits) >= 7
    for path, p in waits:
        assert p.default is True and "--no-wait" in p.secondary_opts, " ".join(path)
    # the older spelling (a lone --no-wait flag) means the same: waiting is the default
    for path, cmd in TREE:
        for p in cmd.params:
            if "--no-wait" in getattr(p, "opts", ()):
                assert p.default is False, " ".join(path)


@pytest.mark.parametrize("path", ["host rm", "rack rm", "profile rm", "vm rm", "lab down", "apply", "host power",
                                  "rack power"])
def test_destructive_commands_take_yes(path: str) -> None:
    assert _param(("prov", *path.split()), "--yes") is not None


@pytest.mark.parametrize("path", ["host list", "rack list", "profile list", "task list", "template list", "vm list",
                                  "host history", "lab status", "context list", "drift", "plan"])
def test_list_commands_take_output_and_no_headers(path: str) -> None:
    key = ("prov", *path.split())
    out = _param(key, "--output")
    assert out is not None
    assert {"table", "wide", "json", "yaml", "name", "csv"} <= {c.value for c in out.type_descriptor.choices}
    assert _param(key, "--no-headers") is not None


HEAVY = ("sqlalchemy", "sqlmodel", "fastapi", "starlette", "pydantic", "pydantic_core", "httpx", "yaml", "rich",
         "jinja2", "cryptography", "libvirt")


def test_startup_imports_nothing_heavy() -> None:
    code = ("import sys; from provisioner.cli.main import build; build(); "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_version_and_help_import_nothing_heavy() -> None:
    code = ("import sys, runpy; sys.argv = ['prov', '{arg}']\n"
            "try:\n    runpy.run_module('provisioner.cli.main', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "sys.stderr.write(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))")
    for arg in ("--version", "--help"):
        proc = subprocess.run([sys.executable, "-c", code.format(arg=arg)], capture_output=True, text=True,
                              timeout=60)
        loaded = set(proc.stderr.split())
        assert "prov" in proc.stdout and not loaded & set(HEAVY), (arg, sorted(loaded & set(HEAVY)))


def test_a_noun_alone_prints_its_help() -> None:
    for args in ([], ["host"], ["context"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and r.stdout.startswith("Usage: prov") and "Commands:" in r.stdout, args
