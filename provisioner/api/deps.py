"""FastAPI dependencies: a DB session per request and bearer-token auth."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner.api import principals
from provisioner.api.principals import Principal
from provisioner.auth import hash_token
from provisioner.db import POOL_TIMEOUT_S, get_engine, request_sessions
from provisioner.errors import Unauthorized
from provisioner.schemas import ACTOR_MAX
from provisioner.settings import Settings, get_settings

# The dependencies below are ``async def`` although they do no async work: FastAPI runs a plain
# ``def`` dependency in the thread pool (a generator one twice, to enter and to exit), and those
# thread hops cost more CPU than the work itself (bench/api). None of them blocks: a Session
# connects on first use, inside the (thread-pool) endpoint; a token lookup that must query the
# database is sent to the thread pool explicitly.


async def settings_dep(request: Request) -> Settings:
    return getattr(request.app.state, "settings", None) or get_settings()


# Request sessions held at once, per event loop and database (db.request_sessions says why):
# a request over the limit waits here, on the event loop, instead of on a worker thread in the pool.
_permits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary())
# Closing a PostgreSQL session rolls back (a round trip): done on these threads, never on the
# route threads, which may all be waiting for the very connection this close gives back.
_closer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prov-db-close")


def _permit(url: str) -> asyncio.Semaphore:
    per_db = _permits.setdefault(asyncio.get_running_loop(), {})
    sem = per_db.get(url)
    if sem is None:
        sem = per_db[url] = asyncio.Semaphore(request_sessions(url))
    return sem


async def get_session(settings: Annotated[Settings, Depends(settings_dep)]) -> AsyncIterator[Session]:
    permit = _permit(settings.db_url)
    try:
        await asyncio.wait_for(permit.acquire(), POOL_TIMEOUT_S)
    except TimeoutError:
        # the same answer as a pool timeout: 503 database_busy with Retry-After (api/app.py)
        raise PoolTimeout(f"no database session free within {POOL_TIMEOUT_S:.0f} s") from None
    session = Session(get_engine(settings), expire_on_commit=False)
    try:
        yield session
    finally:
        try:
            if session.in_transaction() and session.get_bind().dialect.name != "sqlite":
                await asyncio.get_running_loop().run_in_executor(_closer, session.close)
            else:
                session.close()  # no connection held, or a local SQLite one: no waiting
        finally:
            permit.release()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]


CONTEXT_HEADER = "x-prov-context"
# A valid token is remembered this long, saving one query per request (the API
# bench's hot path). A token revoked elsewhere (``prov token revoke`` on the controller's
# machine, another controller process) therefore stops working within this many seconds;
# one revoked through this process's API at once (forget_token). Expiry is checked on
# every request, cached or not.
TOKEN_CACHE_TTL = 10.0
_TOKEN_CACHE_MAX = 1024
_token_cache: dict[tuple[str, str], tuple[Principal, float]] = {}


def forget_token(digest: str) -> None:
    """Drop a token from this process's cache (it was just revoked)."""
    for key in [k for k in _token_cache if k[1] == digest]:
        _token_cache.pop(key, None)


async def require_token(request: Request, settings: SettingsDep) -> str:
    """Operator auth: ``Authorization: Bearer <token>`` whose scopes allow this route
    (api/scopes.py, else 403); returns the token's name (the actor)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    # Keyed by database too: one process may serve several apps (the tests do).
    key = (settings.db_url, hash_token(token.strip()))
    cached = _token_cache.get(key)
    if cached is not None and cached[1] > time.monotonic():
        principal = cached[0]
    else:
        found = await run_in_threadpool(principals.lookup, settings, key[1])
        if found is None:
            _token_cache.pop(key, None)
            raise Unauthorized()
        principal = found
        if len(_token_cache) > _TOKEN_CACHE_MAX:
            _token_cache.clear()
        _token_cache[key] = (principal, time.monotonic() + TOKEN_CACHE_TTL)
    if principal.expired():
        _token_cache.pop(key, None)
        raise Unauthorized("API token expired")
    # Callers may say on whose behalf they act (``prov apply --git`` sends the commit), so
    # every history line written for this request names it. Printable ASCII only, bounded.
    context = request.headers.get(CONTEXT_HEADER, "")
    context = "".join(ch for ch in context if 32 <= ord(ch) < 127)[:56].strip()
    if principals.claim_touch(principal):  # last_used_at: at most one write a minute per token
        await run_in_threadpool(principals.touch, settings, principal)
    principals.authorize(request, principal, context)
    return actor_label(principal.actor, context)


def actor_label(actor: str, context: str) -> str:
    """``token:<name> (<context>)`` within the actor columns (VARCHAR(ACTOR_MAX): PostgreSQL refuses
    a longer value): the context is shortened, never the token's name."""
    if context:
        room = ACTOR_MAX - len(actor) - 3
        if room > 0:
            return f"{actor} ({context[:room].rstrip()})"
    return actor[:ACTOR_MAX]


ActorDep = Annotated[str, Depends(require_token)]
