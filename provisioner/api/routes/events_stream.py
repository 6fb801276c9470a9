"""``GET /api/v1/events/stream``: every event as Server-Sent Events (provisioner/events_stream.py).

Bounded: at most ``events_max_streams`` open streams per API process (503 over it) and
``events_max_streams_per_token`` per token (429), each with our error envelope and Retry-After.
The response holds no database connection: the generator reads a batch, gives it back and waits.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from provisioner.api.deps import ActorDep, SettingsDep
from provisioner.errors import InvalidInput
from provisioner.events_stream import KINDS, LOST, StreamFilter, sse_body

router = APIRouter(tags=["events"])

# Seconds a refused client is told to wait before it tries again.
RETRY_AFTER_S = 5

_lock = threading.Lock()
_open_total = 0
_open_by_token: dict[str, int] = {}

_SSE_DOC = (
    "Server-Sent Events, one message per event:\n\n"
    "    id: 1234\n"
    '    data: {"id":1234,"kind":"host.state","host":"web01","rack":"r1","task":null,'
    '"state":"installing","message":"...","progress":null,"at":"2026-12-03T11:00:00.123456Z"}\n\n'
    f"kind is one of {', '.join(KINDS)}; a resume older than the retention starts with one "
    f"`{LOST}` event. Lines starting with `:` are heartbeats (every 15 s).")


def _claim(key: str, total: int, per_token: int) -> JSONResponse | None:
    global _open_total
    with _lock:
        if _open_total >= total:
            return _refuse(503, "too_many_streams", f"this API process already serves {total} event streams; "
                                                     "try again later or another API process")
        if _open_by_token.get(key, 0) >= per_token:
            return _refuse(429, "too_many_streams", f"this token already has {per_token} event streams open "
                                                     "(settings events_max_streams_per_token)")
        _open_total += 1
        _open_by_token[key] = _open_by_token.get(key, 0) + 1
    return None


def _release(key: str) -> None:
    global _open_total
    with _lock:
        _open_total -= 1
        left = _open_by_token.get(key, 1) - 1
        if left > 0:
            _open_by_token[key] = left
        else:
            _open_by_token.pop(key, None)


def _refuse(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "message": message},
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def open_streams() -> int:
    """Streams this process serves now (tests, metrics)."""
    return _open_total


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    response_model=None,
    responses={
        200: {"description": _SSE_DOC, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        429: {"description": "too many streams open for this token"},
        503: {"description": "too many streams open on this API process"},
    },
)
async def events_stream(
    request: Request,
    settings: SettingsDep,
    _actor: ActorDep,
    host: Annotated[list[str], Query(description="only these hosts (repeat or comma-separate)")] = [],  # noqa: B006
    rack: Annotated[list[str], Query(description="only hosts of these racks")] = [],  # noqa: B006
    kind: Annotated[list[str], Query(description=f"only these kinds ({', '.join(KINDS)}) or prefixes (host)")] = [],  # noqa: B006
    last_event_id: Annotated[str | None, Header(description="resume after this id (EventSource sends it)")] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this id (when no Last-Event-ID header "
                                                            "can be sent)")] = None,
) -> StreamingResponse | JSONResponse:
    """Every event from now on (or after ``Last-Event-ID``), as ``text/event-stream``, until the client leaves."""
    filters = StreamFilter.of(host, rack, kind)
    bad = filters.bad_kind()
    if bad is not None:
        raise InvalidInput(field="kind", reason=f"unknown kind {bad!r} (kinds: {', '.join(KINDS)})")
    resume = after
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit():
            raise InvalidInput(field="Last-Event-ID", reason="an event id (a whole number) expected")
        resume = int(last_event_id.strip())
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    key = hashlib.sha256(token.encode()).hexdigest()
    refused = _claim(key, settings.events_max_streams, settings.events_max_streams_per_token)
    if refused is not None:
        return refused

    return _Stream(key, sse_body(settings, filters, resume), media_type="text/event-stream",
                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Stream(StreamingResponse):
    """Gives its slot back however the response ends (client gone before the first byte too)."""

    def __init__(self, key: str, content: AsyncIterator[bytes], **kw: object) -> None:
        super().__init__(content, **kw)  # type: ignore[arg-type]
        self._key = key
        self._gen = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            _release(self._key)
            await self._gen.aclose()  # type: ignore[attr-defined]
