"""``GET /ui/events``: the event stream (provisioner/events_stream.py) for the console's EventSource.

Authenticated by the session cookie (an EventSource cannot send an Authorization header). The
page says where to start (``after``: the newest event id when it was rendered, so nothing that
happened between the render and the connection is missed); a reconnecting EventSource sends
``Last-Event-ID``, which wins. The session is checked again every RECHECK_S: a logged-out,
revoked or expired session's stream ends (the browser's reconnect then gets a 401 and stops).
Open streams count against the REST stream's limits (api/routes/events_stream.py: 503 over the
process's total, 429 over a token's share).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from provisioner import events_stream
from provisioner.api.deps import SettingsDep
from provisioner.api.routes import events_stream as stream_route
from provisioner.api.ui import session as ui_session
from provisioner.api.ui import view
from provisioner.settings import Settings

router = APIRouter(prefix="/ui", include_in_schema=False)

RECHECK_S = 30.0


def _int(value: str | None) -> int | None:
    try:
        return max(0, int(value)) if value not in (None, "") else None
    except ValueError:
        return None


@router.get("/events")
async def ui_events(request: Request, settings: SettingsDep) -> Response:
    sess = await run_in_threadpool(ui_session.current, request, settings)
    if sess is None:
        return view.headers(Response("log in first", status_code=401, media_type="text/plain"))
    q = request.query_params
    filters = events_stream.StreamFilter.of(q.getlist("host"), q.getlist("rack"), q.getlist("kind"))
    if filters.bad_kind() is not None:
        return view.headers(Response("unknown kind", status_code=422, media_type="text/plain"))
    last_id = _int(request.headers.get("last-event-id"))
    if last_id is None:
        last_id = _int(q.get("after"))
    # The REST stream's bounds (settings events_max_streams, per token): one budget per process.
    key = f"ui-token:{sess.token_id}"
    refused = stream_route._claim(key, settings.events_max_streams, settings.events_max_streams_per_token)
    if refused is not None:
        return refused
    response = stream_route._Stream(key, _guarded(request, settings, filters, last_id),
                                    media_type="text/event-stream")
    view.headers(response)
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


async def _guarded(request: Request, settings: Settings, filters: events_stream.StreamFilter,
                   last_id: int | None) -> AsyncIterator[bytes]:
    body = events_stream.sse_body(settings, filters, last_id)
    checked = time.monotonic()
    try:
        async for chunk in body:
            yield chunk
            if time.monotonic() - checked > RECHECK_S:
                checked = time.monotonic()
                if await run_in_threadpool(ui_session.current, request, settings) is None:
                    return
    finally:
        await body.aclose()  # type: ignore[attr-defined]
