"""FastAPI dependencies: a DB session per request and bearer-token auth."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session, select

from provisioner.db import get_engine
from provisioner.errors import Unauthorized
from provisioner.models import ApiToken
from provisioner.settings import Settings, get_settings


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def settings_dep(request: Request) -> Settings:
    return getattr(request.app.state, "settings", None) or get_settings()


def get_session(settings: Annotated[Settings, Depends(settings_dep)]) -> Iterator[Session]:
    with Session(get_engine(settings), expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]


CONTEXT_HEADER = "x-prov-context"
# A valid token is remembered this long, saving one query per request (the API
# bench's hot path). A revoked token therefore stops working within this many seconds.
TOKEN_CACHE_TTL = 10.0
_TOKEN_CACHE_MAX = 1024
_token_cache: dict[str, tuple[str, float]] = {}


def require_token(request: Request, session: SessionDep) -> str:
    """Operator auth: ``Authorization: Bearer <token>``; returns the token's name (the actor)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    digest = hash_token(token.strip())
    cached = _token_cache.get(digest)
    if cached is not None and cached[1] > time.monotonic():
        actor = cached[0]
    else:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
        if row is None or row.revoked:
            _token_cache.pop(digest, None)
            raise Unauthorized()
        actor = f"token:{row.name}"
        if len(_token_cache) > _TOKEN_CACHE_MAX:
            _token_cache.clear()
        _token_cache[digest] = (actor, time.monotonic() + TOKEN_CACHE_TTL)
    # Callers may say on whose behalf they act (``prov apply --git`` sends the commit), so
    # every history line written for this request names it. Printable ASCII only, bounded.
    context = request.headers.get(CONTEXT_HEADER, "")
    context = "".join(ch for ch in context if 32 <= ord(ch) < 127)[:56].strip()
    return f"{actor} ({context})" if context else actor


ActorDep = Annotated[str, Depends(require_token)]
