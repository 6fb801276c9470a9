"""Marks each write request under /api/v1 for the audit log (provisioner/audit.py).

A pure ASGI middleware, so the context variable it sets is seen by the dependencies,
the route and every thread the route runs work in. If the request succeeds without
the session hooks having written a row for it (nothing they watch changed: a template
file, a rack power action fanned out to worker threads), the request itself is
recorded before its response starts, so a client that saw the answer can read the row.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner import audit
from provisioner.settings import Settings

log = logging.getLogger(__name__)


class AuditMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in audit.WRITE_METHODS \
                or not str(scope.get("path", "")).startswith(audit.API_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        req = audit.RequestAudit(method=scope["method"], path=scope["path"])
        token = audit.begin(req)

        async def send_recorded(message: Message) -> None:
            if message["type"] == "http.response.start" and int(message.get("status", 500)) < 400 \
                    and req.actor and not req.rows:
                await self._record(req)
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        finally:
            audit.end(token)

    async def _record(self, req: audit.RequestAudit) -> None:
        try:
            await run_in_threadpool(audit.write_request_row, self.settings, req)
        except Exception as exc:  # the change is made: answer it, and say loudly what is missing
            log.error("audit row for %s by %s not written: %s", req.route, req.actor, _kind(exc))


def _kind(exc: Any) -> str:
    return exc.__class__.__name__
