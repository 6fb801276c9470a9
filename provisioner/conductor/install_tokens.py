"""One-time install tokens: one per install boot, checked on every installer callback.

A token is ``<host id>.<random>``. The host row keeps its SHA-256 (what ``verify``
compares), its expiry and a Fernet ciphertext of the token itself (the key that
encrypts BMC passwords, secret_store). The host id prefix lets ``verify`` load
exactly one row and compare digests in constant time (``hmac.compare_digest``)
instead of looking the secret up by value, which would leak timing through the
index. A database dump without the secret key cannot be replayed.

The token is bound to the boot, not to a fetch of the boot script (issue 18:
each anonymous ``GET /boot/ipxe/{mac}`` used to mint a new token and so revoke
the running installer's one). ``mint`` is called once per netboot-on (the
install workflow's netboot-on step); every boot-script fetch after that gets
the same token back from its ciphertext (``for_boot``), which mints nothing and
revokes nothing. Minting again replaces the previous hash, so every older token
of that host stops working at once; ``revoke`` (done, error, fail, abort)
forgets hash and ciphertext together. conductor/netboot.py explains the choice.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col

from provisioner import secret_store
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


def _new_token(host_id: int, s: Settings) -> tuple[str, dict[str, str | datetime]]:
    """A fresh token and the host columns that store it (digest, ciphertext, expiry)."""
    token = f"{host_id}.{secrets.token_urlsafe(_TOKEN_BYTES)}"
    return token, {"install_token_hash": _digest(token),
                   # masked by shape and carrier (secret_store._TOKEN_SHAPE/_CARRIER): not remembered by value
                   "install_token_enc": secret_store.encrypt(token, s, remember=False),
                   "install_token_expires": utcnow() + timedelta(seconds=s.install_token_ttl)}


def mint(session: Session, host: Host, settings: Settings | None = None) -> str:
    """Create a fresh token for ``host`` (invalidating any earlier one) and commit.

    Called once per netboot-on; a boot-script fetch never calls it while a token is live.
    """
    s = settings or get_settings()
    if host.id is None:
        raise ValueError("host must be saved before a token is minted")
    token, columns = _new_token(host.id, s)
    for name, value in columns.items():
        setattr(host, name, value)
    session.add(host)
    session.commit()
    session.refresh(host)
    return token


def _live(host: Host) -> bool:
    """Does the host hold a token that ``verify`` would still accept?"""
    expires = host.install_token_expires
    return bool(host.install_token_hash) and expires is not None and expires > utcnow()


def issued(host: Host, settings: Settings | None = None) -> str | None:
    """The host's live token in plain text (from its ciphertext), or None.

    None also when the ciphertext is missing (a token minted before it was stored), cannot be
    decrypted (the secret key changed) or does not match the stored digest.
    """
    if not _live(host) or not host.install_token_enc:
        return None
    try:
        token = secret_store.decrypt(host.install_token_enc, settings or get_settings(), remember=False)
    except secret_store.SecretKeyError:
        return None
    return token if hmac.compare_digest(_digest(token), host.install_token_hash or "") else None


@dataclass(frozen=True)
class BootToken:
    """What a boot script of an installing host may carry.

    ``token`` None: the host holds a live token that cannot be shown again; it is left alone
    (revoking it would break the installer that has it), and the boot gets no installer.
    """

    token: str | None
    minted: bool = False


def for_boot(session: Session, host: Host, settings: Settings | None = None) -> BootToken:
    """The token of this install boot: the live one again, or (none live) a fresh one.

    Never replaces a live token. A fresh one is minted only when the host has none that
    ``verify`` would accept (netboot turned on without a mint, or the last one expired), with a
    compare-and-set so two first fetches at once agree on one token instead of one revoking the
    other's.
    """
    s = settings or get_settings()
    token = issued(host, s)
    if token is not None:
        return BootToken(token)
    if _live(host):
        return BootToken(None)
    assert host.id is not None
    token, columns = _new_token(host.id, s)
    result = session.execute(
        update(Host)
        .where(col(Host.id) == host.id)
        .where(or_(col(Host.install_token_hash).is_(None), col(Host.install_token_expires).is_(None),
                   col(Host.install_token_expires) <= utcnow()))
        .values(**columns)
    )
    session.commit()
    session.refresh(host)
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return BootToken(token, minted=True)
    return BootToken(issued(host, s))  # another fetch minted first: its token is this boot's


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
    """Forget the host's token (digest and ciphertext): every later use of it gets 403."""
    host.install_token_hash = None
    host.install_token_enc = None
    host.install_token_expires = None
    session.add(host)
    if commit:
        session.commit()
        session.refresh(host)
