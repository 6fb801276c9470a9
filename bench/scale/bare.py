"""The bare FastAPI app bench/scale compares prov's API with: fixed JSON, no database, no middleware.

``uvicorn --factory bench.scale.bare:app`` under the same uvicorn options and worker counts as
``prov serve --role api``. The bodies are prov's own answers captured once at the start of the run
(a page of 100 hosts, one host, one rack: PROV_BENCH_PAYLOADS), so both sides send the same bytes
and the ratio is prov's work per request, not payload size.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Response


def app() -> FastAPI:
    payloads = Path(os.environ["PROV_BENCH_PAYLOADS"])
    page, host, rack = ((payloads / f"{n}.json").read_bytes() for n in ("page", "host", "rack"))
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def js(body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type="application/json")

    @api.get("/healthz")
    def healthz() -> Response:
        return js(b'{"status":"ok"}')

    @api.get("/bare/page")
    def get_page() -> Response:
        return js(page)

    @api.get("/bare/host")
    def get_host() -> Response:
        return js(host)

    @api.patch("/bare/host")
    def patch_host() -> Response:
        return js(host)

    @api.post("/bare/racks")
    def post_rack() -> Response:
        return js(rack, 201)

    @api.delete("/bare/racks/{name}")
    def delete_rack(name: str) -> Response:
        return Response(status_code=204)

    return api
