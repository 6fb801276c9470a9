"""prov: take a server from "racked, BMC reachable" to "installed, hardened, running containers"."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The installed distribution's version (pyproject.toml's, for a wheel and an editable install alike).
    __version__ = version("provisioner")
except PackageNotFoundError:  # imported from a tree that was never installed (PYTHONPATH=checkout)
    __version__ = "0+unknown"
