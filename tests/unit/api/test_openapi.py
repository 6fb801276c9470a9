"""api/openapi.py: operation ids, the bearer scheme and the error envelope, without a server.

The live document, a generated client and the docs pages are tested in
tests/integration/api/test_openapi_clients.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from openapi_spec_validator import validate

from provisioner.api import openapi
from provisioner.api.app import create_app
from provisioner.api.deps import require_token
from provisioner.settings import Settings


def _ops(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p, m): op for p, item in spec["paths"].items() for m, op in item.items()}


def test_the_apps_document_is_valid_with_short_unique_ids(tmp_path: Path) -> None:
    spec = create_app(Settings(data_dir=tmp_path)).openapi()
    validate(spec)
    ops = _ops(spec)
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert ops[("/api/v1/racks", "post")]["operationId"] == "create_rack"
    assert ops[("/boot/files/{path}", "head")]["operationId"] == "boot_file_head"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert ops[("/api/v1/hosts", "get")]["security"] == [{"bearer": []}]
    assert "security" not in ops[("/boot/boot.ipxe", "get")]


# FastAPI warns of the clashes _app() makes on purpose (openapi._unique_ids resolves them).
CLASH = pytest.mark.filterwarnings("ignore:Duplicate Operation ID:UserWarning")


def _app() -> FastAPI:
    """Two functions of one name, one function for two methods, an operator and a public route."""
    app = FastAPI(**openapi.APP_OPTIONS)
    a, b = APIRouter(tags=["alpha"]), APIRouter(tags=["beta"])

    @a.get("/things/{name}")
    def show(name: str) -> dict[str, str]:
        return {"name": name}

    @b.api_route("/other", methods=["GET", "HEAD", "POST"])
    def show_other() -> dict[str, str]:
        return {}

    @b.get("/beta/{name}", name="show")
    def show_beta(name: str) -> dict[str, str]:
        return {"name": name}

    app.include_router(a, prefix="/api/v1", dependencies=[Depends(require_token)])
    app.include_router(b)
    openapi.install(app)
    return app


@CLASH
def test_ids_stay_unique_and_readable_when_names_clash() -> None:
    ops = _ops(_app().openapi())
    assert ops[("/api/v1/things/{name}", "get")]["operationId"] == "alpha_show"
    assert ops[("/beta/{name}", "get")]["operationId"] == "beta_show"
    assert ops[("/other", "get")]["operationId"] == "show_other"
    assert {ops[("/other", m)]["operationId"] for m in ("head", "post")} == {"show_other_head", "show_other_post"}


@CLASH
def test_errors_are_the_envelope_and_only_operator_routes_ask_for_the_token() -> None:
    spec = _app().openapi()
    ops = _ops(spec)
    operator, public = ops[("/api/v1/things/{name}", "get")], ops[("/beta/{name}", "get")]
    assert operator["security"] == [{"bearer": []}] and "security" not in public
    assert {"401", "403", "404", "409", "422", "500", "503"} <= set(operator["responses"])
    assert "401" not in public["responses"]
    for op in (operator, public):
        for code, response in op["responses"].items():
            if code[0] in "45":
                assert response["content"]["application/json"]["schema"] == {"$ref": openapi.ERROR_REF}
    assert ops[("/other", "post")]["responses"]["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    validate(spec)
