"""Entry point of the ``prov`` console script.

Every command module is imported here, by name: each adds its commands to the
nouns of groups.py as it is imported. A new command module is one more name in
that import. None of them imports SQLAlchemy, FastAPI, pydantic models, httpx,
yaml or rich tables at import time (they load inside the commands that use
them; ``prov serve`` imports the server only when it runs), so ``prov
--version``, ``--help`` and each TAB of shell completion stay fast.
"""

from __future__ import annotations

from typing import Any

import typer
import typer.main

from provisioner.cli import (  # noqa: F401  (each registers its commands on import)
    ansible,
    completion,
    configure,
    events,
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


def build() -> Any:
    """The click command tree of ``prov`` (groups.ProvGroup: one-line usage errors, help that names values)."""
    return typer.main.get_command(app)


def main() -> None:
    build().main(prog_name="prov")  # exits with the command's code (exitcodes.py)


if __name__ == "__main__":
    main()
