"""``prov completion bash|zsh|fish``: the script loads in a real bash and completes commands, options and choices."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import prov_executable

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def _bash(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(prov_executable()).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run([BASH or "bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def _complete(*cases: tuple[str, ...]) -> list[list[str]]:
    """What TAB offers after each case's words (the last one is the word being completed), in one bash."""
    script = ["source <(prov completion bash) || exit 1"]
    for words in cases:
        array = " ".join(f"'{w}'" for w in ("prov", *words))
        script.append(f"COMP_WORDS=({array}); COMP_CWORD={len(words)}; _prov_completion prov; "
                      'printf "%s\\n" "${COMPREPLY[@]}"; echo ---')
    r = _bash("\n".join(script))
    assert r.returncode == 0, r.stderr
    return [block.split() for block in r.stdout.split("---\n")[: len(cases)]]


def test_the_bash_script_registers_prov() -> None:
    r = _bash("source <(prov completion bash) && complete -p prov")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "complete -o default -F _prov_completion prov"


def test_completes_commands_options_and_choices() -> None:
    got = _complete(("ho",), ("host", ""), ("host", "list", "--no"), ("host", "list", "-o", ""),
                    ("host", "list", "--state", "install"), ("completion", ""))
    assert got[0] == ["host"]
    assert "list" in got[1] and "add" in got[1]
    assert got[2] == ["--no-headers"]
    assert got[3] == ["table", "wide", "json", "yaml", "name", "csv"]
    assert got[4] == ["installing", "install-wait", "install-failed"]
    assert got[5] == ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(shell: str) -> None:
    r = subprocess.run([prov_executable(), "completion", shell], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "_PROV_COMPLETE=complete_" + shell in r.stdout
    if shell == "zsh" and shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=r.stdout, text=True, timeout=60).returncode == 0


def test_an_unknown_shell_is_a_usage_error() -> None:
    r = subprocess.run([prov_executable(), "completion", "tcsh"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
