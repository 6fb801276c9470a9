"""FastAPI dependencies: a DB session per request and bearer-token auth."""

from __future__ import annotations

import hashlib
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


def require_token(request: Request, session: SessionDep) -> str:
    """Operator auth: ``Authorization: Bearer <token>``; returns the token's name (the actor)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip()))).first()
    if row is None or row.revoked:
        raise Unauthorized()
    actor = f"token:{row.name}"
    # Callers may say on whose behalf they act (``prov apply --git`` sends the commit), so
    # every history line written for this request names it. Printable ASCII only, bounded.
    context = request.headers.get(CONTEXT_HEADER, "")
    context = "".join(ch for ch in context if 32 <= ord(ch) < 127)[:56].strip()
    return f"{actor} ({context})" if context else actor


ActorDep = Annotated[str, Depends(require_token)]
