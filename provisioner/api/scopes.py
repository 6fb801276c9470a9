"""Which token scope each operator route needs: the one table, checked by api.deps.require_token.

Every route behind an API token depends on ``require_token`` (api/app.py mounts the
operator routers with it; /metrics declares it), and ``require_token`` asks
``check`` here before the route runs, so no route can forget its scope:

* ``/tokens`` and ``/audit`` (every method): ``admin``;
* any other write (POST, PUT, PATCH, DELETE): ``operator`` (or admin);
* any other read: ``viewer`` (or operator, admin);
* ``installer`` tokens reach only ``INSTALLER_ROUTES``: reads an installer automation
  needs (profiles, templates and a host's rendered install files, which carry a
  placeholder instead of an install token). The install-time callbacks under
  /install/v1 need no API token at all: each host has its own one-time token;
* ``metrics`` tokens reach only ``METRICS_ROUTES`` (``GET /metrics``): a Prometheus
  scraper's token, which can read no host, BMC or profile. Every other scope may
  scrape too (``/metrics`` is a read: viewer).
"""

from __future__ import annotations

from collections.abc import Iterable

from provisioner.errors import Forbidden

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Router paths (without the /api/v1 mount prefix), as the routes declare them.
ADMIN_ONLY_PREFIXES = ("/tokens", "/audit")
INSTALLER_ROUTES = frozenset({
    ("GET", "/profiles"),
    ("GET", "/profiles/{profile}"),
    ("GET", "/templates"),
    ("GET", "/templates/{kind}/{name}"),
    ("GET", "/hosts/{host}/rendered/{kind}"),
    ("GET", "/hosts/{host}/preview/{kind}"),
})
# /metrics is mounted at the root (api/app.py PUBLIC_ROUTERS, behind require_token); no
# operator route under /api/v1 is named /metrics (tests/unit/test_metrics.py walks them all).
METRICS_ROUTES = frozenset({("GET", "/metrics")})
# What each scope includes besides itself.
_IMPLIES = {"admin": {"admin", "operator", "viewer"}, "operator": {"operator", "viewer"}, "viewer": {"viewer"}}


def _read(method: str) -> str:
    return "GET" if method in ("HEAD", "OPTIONS") else method


def required_scope(method: str, route_path: str) -> str:
    """The least scope that may call ``method route_path``: admin, operator or viewer."""
    if any(route_path == p or route_path.startswith(p + "/") for p in ADMIN_ONLY_PREFIXES):
        return "admin"
    return "operator" if method in WRITE_METHODS else "viewer"


def allows(scopes: Iterable[str], method: str, route_path: str) -> bool:
    held = set(scopes)
    need = required_scope(method, route_path)
    if any(need in _IMPLIES.get(s, ()) for s in held):
        return True
    if "metrics" in held and (_read(method), route_path) in METRICS_ROUTES:
        return True
    return "installer" in held and (_read(method), route_path) in INSTALLER_ROUTES


def check(*, name: str, scopes: Iterable[str], method: str, route_path: str, shown_path: str) -> None:
    """Raise 403, naming the scope needed, unless ``scopes`` allow the route."""
    held = tuple(scopes)
    if allows(held, method, route_path):
        return
    need = required_scope(method, route_path)
    raise Forbidden(
        f"token {name!r} (scopes: {', '.join(held) or 'none'}) may not {method} {shown_path}: "
        f"needs the {need} scope",
        required_scope=need, token_scopes=list(held),
    )
