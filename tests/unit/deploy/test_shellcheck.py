"""shellcheck on every shell script of the tree, and on the shell that templates render.

Scripts are found by their ``#!`` line (so a new one is checked without being
listed here): deploy/, the ramdisk's /init and udhcpc script, the lab
recipes, tests/run.sh, .ci/run, the playbooks' inventory script. Templates
that render a shell script (the deploy agent, the lab BMC's chassis program)
are rendered with a test context and the output is checked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioner.lab import bmc
from provisioner.render import render
from tests.support.helpers import require_binary
from tests.unit.lab.test_deploy_agent import agent_context

ROOT = Path(__file__).resolve().parents[3]
# Not ours, or not source: venvs, caches, rendered golden copies (checked from their template below).
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             "build", "dist", "golden", "var", ".cache"}
SHELLS = ("#!/bin/sh", "#!/bin/bash", "#!/usr/bin/env bash", "#!/usr/bin/env sh")
# Codes left out for rendered templates only, each a deliberate construct there:
#   SC2209 DECOMPRESS=cat stores a command name, to be run later
#   SC2015 `write && write || fail`: fail exits, so the || branch is "either write failed"
#   SC2016 a ' inside a single-quoted YAML document is the quoting, not an expansion
#   SC1010 `report done "..."`: "done" is an argument (the event's name), not the keyword
TEMPLATE_EXCLUDES = "SC2209,SC2015,SC2016,SC1010"


def shell_scripts() -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix in (".py", ".j2", ".md", ".yml", ".yaml", ".toml", ".json"):
                continue
            try:
                with path.open("rb") as fh:
                    first = fh.readline(64).decode("ascii", "replace").strip()
            except OSError:
                continue
            if first.startswith(SHELLS):
                found.append(path)
    return sorted(found)


def _shellcheck(*args: str) -> subprocess.CompletedProcess[str]:
    require_binary("shellcheck")  # deploy/install.sh --dev installs it
    return subprocess.run(["shellcheck", "--format=gcc", *args], capture_output=True, text=True, timeout=120)


def test_the_scripts_are_found() -> None:
    rel = {p.relative_to(ROOT).as_posix() for p in shell_scripts()}
    for must in ("deploy/install.sh", "provisioner/lab/recipes/ramdisk/init",
                 "provisioner/lab/recipes/ramdisk/udhcpc.script", "provisioner/lab/recipes/build-image.sh",
                 "tests/run.sh", ".ci/run"):
        assert must in rel, must


def test_every_shell_script_is_shellcheck_clean() -> None:
    scripts = shell_scripts()
    out = _shellcheck(*map(str, scripts))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", ["deploy-agent", "lab-chassis"])
def test_rendered_shell_templates_are_shellcheck_clean(tmp_path: Path, name: str) -> None:
    if name == "deploy-agent":
        script = tmp_path / "agent.sh"
        script.write_text(render("deploy/agent.sh.j2", agent_context()))
        shell = "dash"  # busybox ash runs it; dash is the closest dialect shellcheck knows
    else:
        cfg = bmc.BmcConfig(name="lab-node1", port=9001, username="admin", password="pw",
                            uri="qemu:///system", state_dir=str(tmp_path / "bmc"))
        bmc.write_config(cfg)
        script = cfg.dir / "chassis.sh"
        shell = "sh"
    out = _shellcheck(f"--shell={shell}", f"--exclude={TEMPLATE_EXCLUDES}", str(script))
    assert out.returncode == 0, out.stdout + out.stderr
