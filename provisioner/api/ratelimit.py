"""Per-source-address rate limits on the unauthenticated routes: 429 with Retry-After.

A router dependency (``dependencies=[Depends(limit("boot"))]``) runs before the
route touches the database or reads a body. Each surface has its own bucket
per address (settings ``rate_limit_<surface>_rate`` / ``_burst``), so a client
flooding boot scripts still gets its install callbacks through:

* ``boot``:    /boot/boot.ipxe and /boot/ipxe/{mac} (and, in conductor/boot_service.py,
  the TFTP per-MAC configs)
* ``files``:   /boot/files/... (kernels, initrds, images: few and large)
* ``install``: /install/v1/... (the installer's config, files and reports)

The address is the connection's peer as the ASGI server reports it. Loopback
is limited like any other address unless ``rate_limit_exempt`` names it. The
limiters live on the app (one set per ``create_app``), in bounded memory
(provisioner/ratelimit.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from provisioner.ratelimit import RateLimiter
from provisioner.settings import Settings, get_settings

SURFACES = ("boot", "files", "install")
# For the routers' OpenAPI ``responses``.
RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {"description": "too many requests from this address; retry after Retry-After seconds"}}
_lock = threading.Lock()


class RateLimited(HTTPException):
    """429 in the API's error shape (api/app.py's HTTP error handler), with Retry-After."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(status_code=429, detail=f"too many requests from this address; retry in {seconds} s",
                         headers={"Retry-After": str(seconds)})


def limiter_for(settings: Settings, surface: str) -> RateLimiter:
    """A fresh limiter for ``surface`` with the configured rate, burst, address bound and exemptions."""
    if surface not in SURFACES:
        raise ValueError(f"unknown rate-limit surface {surface!r}")
    return RateLimiter(getattr(settings, f"rate_limit_{surface}_rate"),
                       getattr(settings, f"rate_limit_{surface}_burst"),
                       settings.rate_limit_addresses, settings.rate_limit_exempt)


def _limiters(request: Request) -> dict[str, RateLimiter]:
    state = request.app.state
    found: dict[str, RateLimiter] | None = getattr(state, "rate_limiters", None)
    if found is None:
        with _lock:
            found = getattr(state, "rate_limiters", None)
            if found is None:
                settings = getattr(state, "settings", None) or get_settings()
                found = {surface: limiter_for(settings, surface) for surface in SURFACES}
                state.rate_limiters = found
    return found


def limit(surface: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency that refuses a request with 429 once its address has used up ``surface``'s burst."""
    if surface not in SURFACES:
        raise ValueError(f"unknown rate-limit surface {surface!r}")

    # async: a plain def dependency would cost a thread-pool hop per request (api/deps.py)
    async def check(request: Request) -> None:
        wait = _limiters(request)[surface].check(request.client.host if request.client else "")
        if wait > 0:
            raise RateLimited(wait)

    return check
