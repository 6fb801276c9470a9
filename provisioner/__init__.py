"""prov: take a server from "racked, BMC reachable" to "installed, hardened, running containers"."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # ``__version__`` is read on first use: importlib.metadata costs every command ~30 ms otherwise
    # (``prov --help``, each TAB of shell completion), and only --version and the API need it.
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        # The installed distribution's version (pyproject.toml's, for a wheel and an editable install alike).
        value = version("provisioner")
    except PackageNotFoundError:  # imported from a tree that was never installed (PYTHONPATH=checkout)
        value = "0+unknown"
    globals()["__version__"] = value
    return value
