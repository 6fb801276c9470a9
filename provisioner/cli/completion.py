"""``prov completion bash|zsh|fish``: the shell completion script on stdout.

The script is Typer's (the same ``--show-completion`` prints): on TAB the shell
runs ``prov`` with ``_PROV_COMPLETE`` set and prov answers with the matching
commands, options and choices. Load it for the current shell with
``source <(prov completion bash)``, or save it where the shell looks
(``prov completion bash > /etc/bash_completion.d/prov``).
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer

from provisioner.cli.groups import app

PROG = "prov"
COMPLETE_VAR = "_PROV_COMPLETE"


class Shell(enum.StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def script(shell: Shell) -> str:
    from typer._completion_shared import get_completion_script  # Typer's scripts speak its completion protocol

    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value) + "\n"


@app.command("completion")
def completion(shell: Annotated[Shell, typer.Argument(help="the shell to complete for: bash, zsh or fish")]) -> None:
    """Print the shell completion script for bash, zsh or fish: source <(prov completion bash)."""
    sys.stdout.write(script(shell))
