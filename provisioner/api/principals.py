"""Who is calling: a verified API token's id, name, scopes and expiry (api.deps.require_token).

``require_token`` keeps a ``Principal`` in its short cache (api/deps.py); everything it
needs beyond the cache lives here: the lookup, the scope check (api/scopes.py), the
throttled ``last_used_at`` write and the actor handed to the audit log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request
from sqlmodel import Session, select

from provisioner import audit, auth
from provisioner.api import scopes
from provisioner.db import get_engine
from provisioner.models import ApiToken, utcnow
from provisioner.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    db_url: str

    @property
    def actor(self) -> str:
        return f"token:{self.name}"

    def expired(self) -> bool:
        return auth.is_expired(self.expires_at)


# (database, token id) -> time.monotonic() of the last last_used_at write this process made
# or saw; a write is due once LAST_USED_EVERY_S has passed.
_touched: dict[tuple[str, int], float] = {}
_touched_lock = threading.Lock()


def lookup(settings: Settings, digest: str) -> Principal | None:
    """The usable token with this hash (None if unknown or revoked; expiry is checked by the caller)."""
    with Session(get_engine(settings)) as session:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
        if row is None or row.revoked or row.id is None:
            return None
        principal = Principal(token_id=row.id, name=row.name, scopes=auth.token_scopes(row),
                              expires_at=row.expires_at, db_url=settings.db_url)
        if row.last_used_at is not None:  # written recently (maybe by another process): not due yet
            age = (utcnow() - row.last_used_at).total_seconds()
            if age < auth.LAST_USED_EVERY_S:
                with _touched_lock:
                    _touched[(settings.db_url, row.id)] = max(
                        _touched.get((settings.db_url, row.id), float("-inf")), time.monotonic() - max(age, 0.0))
        return principal


def claim_touch(principal: Principal) -> bool:
    """True (once per LAST_USED_EVERY_S per token) when this request should write last_used_at."""
    key = (principal.db_url, principal.token_id)
    now = time.monotonic()
    with _touched_lock:
        if now - _touched.get(key, float("-inf")) < auth.LAST_USED_EVERY_S:
            return False
        _touched[key] = now
        return True


def touch(settings: Settings, principal: Principal) -> None:
    """Write last_used_at (best effort: a busy database must not fail the request)."""
    try:
        with Session(get_engine(settings)) as session:
            auth.touch(session, principal.token_id)
    except Exception as exc:  # any database error: the request goes on without it
        log.warning("could not record the use of token %s: %s", principal.token_id, exc.__class__.__name__)


def authorize(request: Request, principal: Principal, context: str) -> None:
    """403 unless the token's scopes allow this route; then name the actor for the audit log."""
    route = request.scope.get("route")
    route_path = getattr(route, "path", None)
    prefix = audit.API_PREFIX if request.url.path.startswith(audit.API_PREFIX + "/") else ""
    if not isinstance(route_path, str):
        route_path = "/tokens"  # no route known: only an admin token passes (fail closed)
    scopes.check(name=principal.name, scopes=principal.scopes, method=request.method, route_path=route_path,
                 shown_path=prefix + route_path)
    req = audit.current()
    if req is not None:
        req.actor, req.token_id, req.context = principal.actor, principal.token_id, context
        req.route = f"{request.method} {prefix}{route_path}"
        req.path_params = {k: str(v) for k, v in request.path_params.items()}
        req.request = request  # its body (read by FastAPI or by the route) summarises a request-only row
