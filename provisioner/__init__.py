"""prov: take a server from "racked, BMC reachable" to "installed, hardened, running containers"."""

__version__ = "0.1.0"
