"""Entry point of the ``prov`` console script."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer
import typer.main

import provisioner.cli as _pkg
from provisioner.cli.groups import app

_SKIP = {"main", "groups", "output"}


def _load_commands() -> None:
    for mod in pkgutil.iter_modules(_pkg.__path__):
        if mod.name not in _SKIP and not mod.name.startswith("_"):
            importlib.import_module(f"{_pkg.__name__}.{mod.name}")


def main() -> None:
    _load_commands()
    command = typer.main.get_command(app)
    try:
        rc = command.main(prog_name="prov", standalone_mode=False)
    except typer.TyperException as exc:
        # Usage errors (missing argument, unknown option, bad value) follow the same
        # contract as every other error: one ``error: ...`` line on stderr.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            ctx.get_help()  # ``prov host``: typer prints the group's help
            sys.exit(2)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
        sys.stderr.write(f"error: {message}{hint}\n")
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
