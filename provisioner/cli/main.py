"""Entry point of the ``prov`` console script.

Every command module is imported here, by name: each adds its commands to the
nouns of groups.py as it is imported. A new command module is one more name in
that import. None of them imports SQLAlchemy or FastAPI at import time (the CLI
is an HTTP client; ``prov serve`` imports the server only when it runs), so
``prov --version`` stays fast.
"""

from __future__ import annotations

import sys

import typer
import typer.main

from provisioner.cli import (  # noqa: F401  (each registers its commands on import)
    configure,
    gitops,
    guests,
    host,
    importer,
    lab,
    login,
    power,
    profile,
    provision,
    rack,
    serve,
    task,
    template,
    virt,
)
from provisioner.cli.groups import app


def main() -> None:
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
