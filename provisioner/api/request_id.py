"""X-Request-ID: one id per request, on its response and on every log line written while serving it.

A client (or the proxy in front) may send its own id, so its logs and ours join up; it is taken
when it is short and made of safe characters only (``ACCEPTED``: what UUIDs, ULIDs, hex and
base64 ids, and ``Root=1-...`` trace ids are made of), since it is written into every log line
and echoed in a header. Anything else (too long, spaces, quotes, control characters, empty)
is replaced by a fresh id, never trimmed or repaired: a mangled id would join nothing.

The middleware is the outermost one (api/app.py), so every answer carries the header, the
body-size limit's 413 and the router's 404 included. The id lives in ``logs.request_id`` for the
request's task (and the threads it runs work in: contextvars are copied there), and logs.py's
filter puts it on every record. It is deliberately left set when the app raises: Starlette's
error middleware, outside this one, logs the failure and answers the 500 in the same task
(api/app.py's handler echoes the header there); each request runs in its own task, so it goes no further.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner import logs

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
MAX_LENGTH = 128  # room for any common id format (a UUID is 36, an AWS trace id 40)
ACCEPTED = re.compile(rf"[A-Za-z0-9._:=+/@-]{{1,{MAX_LENGTH}}}")


def new_id() -> str:
    return uuid.uuid4().hex


def accepted(value: bytes | str | None) -> str | None:
    """The client's id if it can be used as it is, else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if ACCEPTED.fullmatch(value) else None


def current() -> str | None:
    """The id of the request being served here (None outside one)."""
    return logs.request_id.get()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope.get("headers", []) if k == _HEADER_KEY), None)
        rid = accepted(sent) or new_id()
        token = logs.request_id.set(rid)
        value = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER_KEY]
                message = {**message, "headers": [*headers, (_HEADER_KEY, value)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
        logs.request_id.reset(token)  # not in a finally: see the module's docstring


def request_id_header() -> dict[str, str] | None:
    """The header for an answer made outside the middleware (api/app.py's 500)."""
    rid = current()
    return {HEADER: rid} if rid else None


# --------------------------------------------------------------------------- the OpenAPI document
_ABOUT = (f"the request's id, in the controller's log lines for it: the one sent, if it is 1-{MAX_LENGTH} "
          "of `A-Z a-z 0-9 . _ : = + / @ -`, else a new one")
PARAMETER: dict[str, Any] = {
    "name": HEADER, "in": "header", "required": False, "schema": {"type": "string"},
    "description": f"an id for this request (1-{MAX_LENGTH} of `A-Z a-z 0-9 . _ : = + / @ -`; anything else "
                   "is replaced by a new id, never refused): answered in the X-Request-ID header and "
                   "written in every log line of the request",
}


def document(op: dict[str, Any]) -> None:
    """An operation of the published document (api/openapi.py): the header it takes and answers."""
    params = op.setdefault("parameters", [])
    if not any(p.get("in") == "header" and str(p.get("name", "")).lower() == _HEADER_KEY.decode() for p in params):
        params.append(dict(PARAMETER))
    for response in op.get("responses", {}).values():  # a new dict: a route's may be shared (api/etags.py)
        response["headers"] = {**response.get("headers", {}), HEADER: {"description": _ABOUT,
                                                                      "schema": {"type": "string"}}}
