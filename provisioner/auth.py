"""API tokens: created here, stored only as their sha256, checked by api.deps.require_token.

A token is 32 random bytes (``secrets.token_urlsafe``), prefixed ``prov_`` so
it is recognisable in a config file. Only the hash is stored; the plain token
is shown exactly once, to whoever created it.

Each token carries scopes (what api/scopes.py lets it do) and may expire:

* ``admin``: everything, tokens and the audit log included;
* ``operator``: every host, rack, profile, template and task action; no token
  management, no audit log;
* ``viewer``: reads only (GET); any write is a 403 naming the scope it needs;
* ``installer``: only what installer automation reads (profiles, templates and a
  host's rendered install files; see api/scopes.py). The install-time callbacks
  themselves use each host's one-time install token, not an API token;
* ``metrics``: ``GET /metrics`` and nothing else (a Prometheus scraper's token).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as pysecrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, func, select

from provisioner.db import get_engine
from provisioner.errors import Conflict, InvalidInput, NotFound
from provisioner.models import ApiToken, utcnow
from provisioner.settings import Settings, get_settings

PREFIX = "prov_"
SCOPES = ("admin", "operator", "viewer", "installer", "metrics")
# last_used_at is written at most this often per token: a busy client must not turn every
# request into a database write.
LAST_USED_EVERY_S = 60.0


def hash_token(token: str) -> str:
    """What is stored and compared: the token's sha256 (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + pysecrets.token_urlsafe(32)


def parse_scopes(scopes: Iterable[str] | str, field: str = "scopes") -> tuple[str, ...]:
    """Scopes in their canonical order, each once; 422 for an unknown one or none at all."""
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    unknown = sorted({s for s in items if s not in SCOPES})
    if unknown:
        raise InvalidInput(field=field, reason=f"unknown scope {unknown[0]!r} (one of {', '.join(SCOPES)})")
    if not items:
        raise InvalidInput(field=field, reason=f"at least one scope ({', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in items)


def token_scopes(row: ApiToken) -> tuple[str, ...]:
    return tuple(s for s in SCOPES if s in row.scopes.split())


def _aware(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def is_expired(expires_at: datetime | None, now: datetime | None = None) -> bool:
    expires = _aware(expires_at)
    return expires is not None and expires <= (now or utcnow())


def issue_token(session: Session, *, name: str, scopes: Iterable[str] = ("admin",),
                expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Store a new token's hash; returns the row and the plain token (the only time it exists)."""
    token = new_token()
    row = ApiToken(name=name, token_hash=hash_token(token), scopes=" ".join(parse_scopes(scopes)),
                   expires_at=_aware(expires_at))
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, token


def create_token(session: Session, *, name: str = "admin", scopes: Iterable[str] = ("admin",),
                 expires_at: datetime | None = None) -> str:
    """Store a new token's hash and return the plain token (the only time it exists)."""
    return issue_token(session, name=name, scopes=scopes, expires_at=expires_at)[1]


def verify_token(session: Session, token: str) -> ApiToken | None:
    digest = hash_token(token)
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None or row.revoked or is_expired(row.expires_at) or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row


def ensure_admin_token(settings: Settings | None = None) -> str | None:
    """On the very first start (no tokens at all) create an ``admin`` token and return it, else None."""
    settings = settings or get_settings()
    with Session(get_engine(settings)) as session:
        if session.exec(select(func.count()).select_from(ApiToken)).one():
            return None
        return create_token(session, name="admin", scopes=("admin",))


def list_tokens(session: Session, *, limit: int | None = None, offset: int = 0) -> list[ApiToken]:
    q = select(ApiToken).order_by(col(ApiToken.id)).offset(offset)
    return list(session.exec(q.limit(limit) if limit is not None else q).all())


def count_tokens(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(ApiToken)).one())


def get_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id) if 0 < token_id < 2**31 else None
    if row is None:
        raise NotFound(kind="token", name=str(token_id))
    return row


def revoke_token(session: Session, row: ApiToken) -> ApiToken:
    """Revoke one token (the API's DELETE). The last usable admin token stays: without it
    nobody could make tokens through the API any more (``prov token create`` on the
    controller's machine still could)."""
    if not row.revoked and "admin" in token_scopes(row) and not is_expired(row.expires_at):
        others = [t for t in session.exec(select(ApiToken).where(col(ApiToken.revoked).is_(False),
                                                                 ApiToken.id != row.id)).all()
                  if "admin" in token_scopes(t) and not is_expired(t.expires_at)]
        if not others:
            raise Conflict(reason=f"token {row.id} ({row.name}) is the last usable admin token; "
                                  "create another admin token first", field="id")
    row.revoked = True
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def revoke_tokens(session: Session, ident: str) -> list[ApiToken]:
    """Revoke the token with this id, or every token with this name; returns the rows revoked.

    The API caches a verified token for ``api.deps.TOKEN_CACHE_TTL`` seconds, so
    a revoked token stops working within that time, without a restart.
    """
    query = select(ApiToken).where(ApiToken.id == int(ident)) if ident.isascii() and ident.isdigit() \
        and 0 < int(ident) < 2**31 else select(ApiToken).where(ApiToken.name == ident)
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


def touch(session: Session, token_id: int, now: datetime | None = None) -> bool:
    """Record a use of the token, unless one was recorded less than a minute ago (by any process)."""
    now = now or utcnow()
    stale = now - timedelta(seconds=LAST_USED_EVERY_S)
    result = session.execute(
        update(ApiToken)
        .where(col(ApiToken.id) == token_id)
        .where(or_(col(ApiToken.last_used_at).is_(None), col(ApiToken.last_used_at) < stale))
        .values(last_used_at=now)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
