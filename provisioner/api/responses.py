"""JSON responses serialised once, with orjson, for the API's hot paths (bench/api).

A route declared with ``response_model=X`` that returns a pydantic model has it
validated again against X and encoded by FastAPI's generic encoder: about as
costly as building the data. Hot routes instead build X-shaped dicts from our
own validated columns and return ``json_response(...)``; ``response_model``
stays on the route for the OpenAPI document.

orjson writes what pydantic writes for our types: aware UTC datetimes as
``2026-01-02T03:04:05.678901Z`` (no fraction when zero: ``OPT_UTC_Z``), compact
separators, UTF-8 text (as Starlette's JSONResponse: ``ensure_ascii=False``).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

_OPTIONS = orjson.OPT_UTC_Z


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=_OPTIONS)


def json_response(data: Any, status_code: int = 200) -> Response:
    return Response(dumps(data), status_code=status_code, media_type="application/json")
