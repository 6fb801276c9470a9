"""API tokens: created here, stored only as their sha256, checked by api.deps.require_token.

A token is 32 random bytes (``secrets.token_urlsafe``), prefixed ``prov_`` so
it is recognisable in a config file. Only the hash is stored; the plain token
is shown exactly once, to whoever created it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as pysecrets

from sqlmodel import Session, col, func, select

from provisioner.db import get_engine
from provisioner.errors import NotFound
from provisioner.models import ApiToken
from provisioner.settings import Settings, get_settings

PREFIX = "prov_"


def hash_token(token: str) -> str:
    """What is stored and compared: the token's sha256 (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + pysecrets.token_urlsafe(32)


def create_token(session: Session, *, name: str = "admin") -> str:
    """Store a new token's hash and return the plain token (the only time it exists)."""
    token = new_token()
    session.add(ApiToken(name=name, token_hash=hash_token(token)))
    session.commit()
    return token


def verify_token(session: Session, token: str) -> ApiToken | None:
    digest = hash_token(token)
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None or row.revoked or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row


def ensure_admin_token(settings: Settings | None = None) -> str | None:
    """On the very first start (no tokens at all) create an ``admin`` token and return it, else None."""
    settings = settings or get_settings()
    with Session(get_engine(settings)) as session:
        if session.exec(select(func.count()).select_from(ApiToken)).one():
            return None
        return create_token(session, name="admin")


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.id))).all())


def revoke_tokens(session: Session, ident: str) -> list[ApiToken]:
    """Revoke the token with this id, or every token with this name; returns the rows revoked.

    The API caches a verified token for ``api.deps.TOKEN_CACHE_TTL`` seconds, so
    a revoked token stops working within that time, without a restart.
    """
    query = select(ApiToken).where(ApiToken.id == int(ident)) if ident.isdigit() \
        else select(ApiToken).where(ApiToken.name == ident)
    rows = list(session.exec(query).all())
    if not rows:
        raise NotFound(kind="token", name=ident)
    for row in rows:
        row.revoked = True
        session.add(row)
    session.commit()
    for row in rows:
        session.refresh(row)
    return rows
