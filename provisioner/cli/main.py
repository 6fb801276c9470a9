"""Entry point of the ``prov`` console script."""

from __future__ import annotations

import importlib
import pkgutil

import provisioner.cli as _pkg
from provisioner.cli.groups import app

_SKIP = {"main", "groups", "output"}


def _load_commands() -> None:
    for mod in pkgutil.iter_modules(_pkg.__path__):
        if mod.name not in _SKIP and not mod.name.startswith("_"):
            importlib.import_module(f"{_pkg.__name__}.{mod.name}")


def main() -> None:
    _load_commands()
    app()


if __name__ == "__main__":
    main()
