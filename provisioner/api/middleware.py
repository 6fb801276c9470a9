"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware): body size limit, request metrics, GC tuning."""

from __future__ import annotations

import gc
import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner.api.offload import limit_route_threads
from provisioner.metrics import http_boot_counter


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# The request body as the app read it (chunks, within the size limit), for error replies: a known
# secret the request carried is never masked in its reply (api/error_text.py, secret_store.mask).
REQUEST_BODY = "prov.request_body"


def _kept(scope: Scope, receive: Receive) -> Receive:
    """``receive`` that also keeps what it hands on in ``scope[REQUEST_BODY]``."""
    kept: list[bytes] = []
    scope[REQUEST_BODY] = kept

    async def keep() -> Message:
        message = await receive()
        if message["type"] == "http.request" and message.get("body"):
            kept.append(message["body"])
        return message

    return keep


class BodyLimitMiddleware:
    """413 for bodies above ``max_bytes``: by Content-Length up front, or while streaming a chunked
    body; the body read is kept in the scope (``REQUEST_BODY``)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = {"error": "body_too_large", "message": f"request body exceeds {self.max_bytes} bytes",
                "field": "body", "limit": self.max_bytes}
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_json(send, 413, body)
                    return
        length = next((value for name, value in scope.get("headers", []) if name == b"content-length"), None)
        if length is not None or scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive if length in (None, b"0") else _kept(scope, receive), send)
            return
        # Chunked body without a length: read it here, up to the limit, then replay it.
        # (Raising from inside the app's receive() would surface as a 400 parse error.)
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await _send_json(send, 413, body)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        scope[REQUEST_BODY] = chunks
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("prov_http_requests", "HTTP requests handled",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("prov_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def _route_template(scope: Scope) -> str:
    """The route template, not the raw path: label cardinality stays bounded.
    (FastAPI >= 0.12x keeps the prefixed template in effective_route_context.)"""
    fastapi_scope = scope.get("fastapi")
    effective = fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    return str(getattr(effective, "path_format", None) or getattr(scope.get("route"), "path", None) or "unmatched")


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()
        boot: Counter | None = None  # a boot download's byte counter (prov_http_boot_bytes_total)

        async def capture(message: Message) -> None:
            nonlocal status, boot
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # routed by now: the route template tells a boot download from the rest
                boot = http_boot_counter(scope.get("method", ""), _route_template(scope), status)
            elif boot is not None and message["type"] == "http.response.body":
                boot.inc(len(message.get("body", b"")))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            name = _route_template(scope)
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, name, str(status)).inc()
            self.metrics.latency.labels(method, name).observe(time.perf_counter() - start)


# Allocations (net of frees) between young-generation collections; CPython's default is 700.
# A 100-host page keeps ~3,000 objects alive while it is built, so at 700 nearly every page
# request ran a collection that found nothing to free (0.2 ms each, bench/api); at 20,000 a
# collection only follows real growth.
GC_GEN0_THRESHOLD = 20_000
_gc_tuned = False


def tune_gc() -> None:
    """Once per process, after start-up: move everything allocated so far (modules, the app, the ORM
    mappers: ~150,000 objects) out of the collector's sight with ``gc.freeze()``, so a full
    collection scans only what requests left behind (measured: 100+ ms pauses become < 10 ms),
    and raise the young-generation threshold (``GC_GEN0_THRESHOLD``)."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()  # what is garbage now would never be freed once frozen
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, gen0), gen1, gen2)


class GcTuningMiddleware:
    """Calls ``tune_gc()`` when the ASGI lifespan start-up (the background services included)
    completes, and cuts the route threads then (api/offload.limit_route_threads), on the serving loop."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                tune_gc()
                limit_route_threads()

        await self.app(scope, receive, watch)
