"""One-time install tokens: minted per install boot, checked on every installer callback.

A token is ``<host id>.<random>``. Only its SHA-256 and an expiry are stored on
the host row, so a database dump cannot be replayed against the install routes.
The host id prefix lets ``verify`` load exactly one row and compare digests in
constant time (``hmac.compare_digest``) instead of looking the secret up by
value, which would leak timing through the index. Minting again replaces the
previous hash, so every older token of that host stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from sqlmodel import Session

from provisioner.errors import Forbidden
from provisioner.models import Host, utcnow
from provisioner.settings import Settings, get_settings

# 32 random bytes = 256 bits, well beyond guessing; urlsafe so it fits a kernel
# command line and a URL path segment without escaping.
_TOKEN_BYTES = 32
# Longest token we accept before hashing anything (id prefix + 43 base64 chars).
MAX_TOKEN_LEN = 128

_REFUSED = "install token is invalid, expired or already used"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint(session: Session, host: Host, settings: Settings | None = None) -> str:
    """Create a fresh token for ``host`` (invalidating any earlier one) and commit."""
    s = settings or get_settings()
    if host.id is None:
        raise ValueError("host must be saved before a token is minted")
    token = f"{host.id}.{secrets.token_urlsafe(_TOKEN_BYTES)}"
    host.install_token_hash = _digest(token)
    host.install_token_expires = utcnow() + timedelta(seconds=s.install_token_ttl)
    session.add(host)
    session.commit()
    session.refresh(host)
    return token


# Host ids are 32-bit integer columns (PostgreSQL int4); a larger number names no host.
_MAX_HOST_ID = 2**31 - 1
_ASCII_ID = re.compile(r"[0-9]{1,10}")


def _host_id(text: str) -> int | None:
    """The token's host id: ASCII decimal digits in the id range, else None. (``str.isdigit`` is
    true for ``²`` that ``int()`` refuses, and an overflowing id failed in the database: both gave
    500 where a refusal belongs, issue 18.)"""
    if not _ASCII_ID.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= _MAX_HOST_ID else None


def verify(session: Session, token: str) -> Host:
    """Return the host this token belongs to, or raise Forbidden (403). Changes nothing."""
    if not token or len(token) > MAX_TOKEN_LEN:
        raise Forbidden(reason=_REFUSED)
    host_part, sep, _secret = token.partition(".")
    host_id = _host_id(host_part)
    if not sep or host_id is None:
        raise Forbidden(reason=_REFUSED)
    host = session.get(Host, host_id)
    # Compare against a dummy digest when there is no host or no token, so the
    # time taken does not tell a caller which host ids exist.
    stored = (host.install_token_hash if host is not None else None) or ""
    ok = hmac.compare_digest(_digest(token), stored or "0" * 64) and bool(stored)
    if host is None or not ok:
        raise Forbidden(reason=_REFUSED)
    if host.install_token_expires is None or host.install_token_expires <= utcnow():
        raise Forbidden(reason=_REFUSED)
    return host


def revoke(session: Session, host: Host, *, commit: bool = True) -> None:
    """Forget the host's token: every later use of it gets 403."""
    host.install_token_hash = None
    host.install_token_expires = None
    session.add(host)
    if commit:
        session.commit()
        session.refresh(host)
