"""Console sessions: an API token exchanged for a signed cookie, per-session CSRF tokens, scopes.

The cookie never holds the token: it holds ``<token id>.<expiry>.<nonce>.<mac>``, the mac an
HMAC-SHA256 over the rest keyed by a key derived from the controller's secret key (secret_store:
``PROV_SECRET_KEY`` or ``{data_dir}/secret.key``, shared by every API process of a cluster, so any
worker accepts a session another one issued). Each request re-reads the token's row, so a revoked
or expired token ends its sessions at once. The cookie is httpOnly and SameSite=Strict, Secure
when the console is served over https.

CSRF: every state-changing form carries ``csrf``, an HMAC of the session's nonce (so it is per
session and needs no storage); a POST without it, or with another session's, is refused (403,
nothing changed). A POST whose Origin names another site is refused too, before anything else.
The login form, which has no session yet, uses a double-submit token: a random value in a
short-lived cookie of its own, repeated in the form.

Logout deletes the cookie and remembers the nonce as ended in this process until the session's
expiry; the signed value cannot be recalled from other processes, which is why sessions are short
(SESSION_S) and end with their token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response
from sqlmodel import Session

from provisioner import auth, secret_store
from provisioner.api import scopes
from provisioner.api.deps import actor_label
from provisioner.db import get_engine
from provisioner.models import ApiToken
from provisioner.settings import Settings

COOKIE = "prov_session"
LOGIN_COOKIE = "prov_login"
# A working day: an operator logs in once per shift; a stolen cookie is worth at most this long.
SESSION_S = 12 * 3600
LOGIN_FORM_S = 15 * 60
# What the audit log and host history say acted: "token:<name> (ui)".
CONTEXT = "ui"

_ended: dict[str, float] = {}  # nonce -> expiry (logged out in this process)
_ended_lock = threading.Lock()


@dataclass(frozen=True)
class UiSession:
    token_id: int
    name: str
    scopes: tuple[str, ...]
    nonce: str
    expires: int
    csrf: str

    @property
    def actor(self) -> str:
        return actor_label(f"token:{self.name}", CONTEXT)

    def may(self, method: str, route_path: str) -> bool:
        """The API's rule (api/scopes.py) for the REST route a console action mirrors."""
        return scopes.allows(self.scopes, method, route_path)

    @property
    def can_act(self) -> bool:
        return self.may("POST", "/hosts/{host}/power")


def _key(settings: Settings) -> bytes:
    # A key of its own, derived from the secret key: a session mac is no Fernet key material.
    return hmac.new(secret_store.load_key(settings), b"prov-ui-session-v1", hashlib.sha256).digest()


def _mac(settings: Settings, purpose: str, value: str) -> str:
    raw = hmac.new(_key(settings), f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def issue(settings: Settings, token_id: int, now: float | None = None) -> tuple[str, int]:
    """A new session cookie value for this token and its expiry (unix seconds)."""
    expires = int((now or time.time()) + SESSION_S)
    body = f"{token_id}.{expires}.{secrets.token_urlsafe(18)}"
    return f"{body}.{_mac(settings, 'session', body)}", expires


def _parse(settings: Settings, value: str) -> tuple[int, int, str] | None:
    parts = value.split(".")
    if len(parts) != 4 or len(value) > 200:
        return None
    body = ".".join(parts[:3])
    if not hmac.compare_digest(parts[3], _mac(settings, "session", body)):
        return None
    try:
        token_id, expires = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return token_id, expires, parts[2]


def current(request: Request, settings: Settings) -> UiSession | None:
    """The request's session, or None (no cookie, bad signature, expired, logged out, token gone)."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    parsed = _parse(settings, value)
    if parsed is None:
        return None
    token_id, expires, nonce = parsed
    now = time.time()
    if expires <= now:
        return None
    with _ended_lock:
        if nonce in _ended:
            return None
    with Session(get_engine(settings)) as s:
        row = s.get(ApiToken, token_id)
        if row is None or row.revoked or auth.is_expired(row.expires_at):
            return None
        name, held = row.name, auth.token_scopes(row)
    return UiSession(token_id=token_id, name=name, scopes=held, nonce=nonce, expires=expires,
                     csrf=_mac(settings, "csrf", nonce))


def login(settings: Settings, token: str) -> ApiToken | None:
    """The usable token row for this token text (None: unknown, revoked or expired)."""
    with Session(get_engine(settings), expire_on_commit=False) as s:
        row = auth.verify_token(s, token.strip())
        if row is None or row.revoked or auth.is_expired(row.expires_at):
            return None
        return row


def end(sess: UiSession) -> None:
    now = time.time()
    with _ended_lock:
        for nonce in [n for n, exp in _ended.items() if exp <= now]:
            del _ended[nonce]
        _ended[sess.nonce] = sess.expires


def csrf_ok(sess: UiSession, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent), sess.csrf)


def same_origin(request: Request) -> bool:
    """False when the browser says the POST comes from another origin (Origin, else Referer)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None  # "null": a sandboxed or opaque origin, never our own form
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin == own or origin.startswith(own + "/")


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int, path: str = "/ui") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
                        secure=secure(request))


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, path="/ui", httponly=True, samesite="strict", secure=secure(request))


def new_login_nonce() -> str:
    return secrets.token_urlsafe(18)
