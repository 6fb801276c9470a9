"""The OpenAPI document of a live controller is usable by outside tools (issue 19, item 5).

* openapi-spec-validator accepts ``/openapi.json``; every operation id is unique and
  readable, every /api/v1 operation asks for the bearer token, every error response is
  the envelope prov really sends (``Error``).
* openapi-python-client generates a client from it (offline, in a tmp dir), and that
  client, imported, creates a rack and a host and lists hosts with the token, gets typed
  objects back, and parses our errors (404, 401) as ``Error``.
* /docs and /redoc and their assets come from the controller: no outside URL in the pages.

The generator pins typer and httpx below the CLI's, so it lives in a venv of its own:
``.venv/codegen`` (deploy/install.sh --dev makes it), or ``PROV_OPENAPI_CLIENT_GENERATOR``
naming the executable, or ``openapi-python-client`` on PATH.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.integration.api.conftest import host_body

pytestmark = pytest.mark.integration

PACKAGE = "prov_generated_client"
OUTSIDE_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


@pytest.fixture
def backend() -> str:
    """SQLite only: the document does not depend on the database (the API tests cover both)."""
    return "sqlite"


def _generator() -> str:
    candidates = [os.environ.get("PROV_OPENAPI_CLIENT_GENERATOR", ""),
                  str(Path(sys.prefix) / "codegen" / "bin" / "openapi-python-client"),
                  shutil.which("openapi-python-client") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    msg = "openapi-python-client not installed (deploy/install.sh --dev puts it in .venv/codegen)"
    if os.environ.get("PROV_REQUIRE_PEERS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _spec(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/openapi.json", timeout=10)
    r.raise_for_status()
    spec: dict[str, Any] = r.json()
    return spec


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_spec_validates_and_documents_auth_and_errors(live) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(live.url)
    validate(spec)  # raises on any violation (duplicate operation ids included)

    ops = list(_operations(spec))
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) and "api_v1" not in i for i in ids), ids
    heads = {op["operationId"] for p, m, op in ops if p == "/boot/files/{path}"}
    assert heads == {"boot_file", "boot_file_head"}
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearer"]
        ["description"]}
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["Error"]["required"] == ["error", "message"]

    for path, method, op in ops:
        where = f"{method.upper()} {path}"
        assert op.get("tags"), where
        if path.startswith("/api/v1/") or path == "/metrics":
            assert op.get("security") == [{"bearer": []}], where
            assert {"401", "403", "404", "409", "422"} <= set(op["responses"]), where
        else:
            assert "security" not in op, where
        if path.startswith("/install/"):
            assert "one-time install token" in op["description"], where
        for code, response in op["responses"].items():
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if code[0] in "45" and path != "/readyz":  # /readyz answers 503 with its own Readiness
                assert schema == {"$ref": "#/components/schemas/Error"}, (where, code)
            if code[0] == "2" and code != "204" and method != "head" and op["operationId"] not in UNTYPED:
                assert any(_typed(c.get("schema")) for c in response.get("content", {}).values()), (where, code)


# The Ansible dynamic inventory: its groups are its keys (Ansible's format, not ours).
UNTYPED = {"ansible_inventory"}


def _typed(schema: dict[str, Any] | None) -> bool:
    """A schema a generator makes a type of: a model, a list of them, a string (text), a union of those."""
    if not schema:
        return False
    if "$ref" in schema:
        return True
    if "anyOf" in schema:
        return all(_typed(s) for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") == "array":
        return _typed(schema.get("items"))
    return schema.get("type") == "string" or (schema.get("type") == "object" and "properties" in schema)


@pytest.fixture
def generated(live, tmp_path: Path) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The client openapi-python-client generates from the live document, imported."""
    tool = _generator()
    spec_file = tmp_path / "openapi.json"
    spec_file.write_text(json.dumps(_spec(live.url)))
    config = tmp_path / "codegen.yaml"  # JSON is YAML; no post hooks (they would run ruff on the output)
    config.write_text(json.dumps({"package_name_override": PACKAGE, "project_name_override": PACKAGE,
                                  "post_hooks": []}))
    out = tmp_path / "gen" / PACKAGE
    run = subprocess.run([tool, "generate", "--path", str(spec_file), "--meta", "none", "--config", str(config),
                          "--output-path", str(out)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_COLOR": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "will not be generated" not in run.stdout + run.stderr, run.stdout  # every operation has a function
    assert (out / "client.py").is_file(), run.stdout
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_generated_client_works(live, token: str, generated: Any) -> None:  # type: ignore[no-untyped-def]
    models = importlib.import_module(f"{PACKAGE}.models")
    create_rack = importlib.import_module(f"{PACKAGE}.api.racks.create_rack")
    get_rack = importlib.import_module(f"{PACKAGE}.api.racks.get_rack")
    create_host = importlib.import_module(f"{PACKAGE}.api.hosts.create_host")
    list_hosts = importlib.import_module(f"{PACKAGE}.api.hosts.list_hosts")
    list_templates = importlib.import_module(f"{PACKAGE}.api.templates.list_templates")
    healthz = importlib.import_module(f"{PACKAGE}.api.health.healthz")

    with generated.AuthenticatedClient(base_url=live.url, token=token, raise_on_unexpected_status=True) as client:
        rack = create_rack.sync(client=client, body=models.RackCreate(name="r1", site="dc1", size_u=42))
        assert isinstance(rack, models.RackPublic), rack
        assert (rack.name, rack.site, rack.size_u, rack.host_count) == ("r1", "dc1", 42, 0)
        assert isinstance(rack.id, int)

        host = create_host.sync(client=client, body=models.HostCreate.from_dict(host_body(rack="r1")))
        assert isinstance(host, models.HostPublic), host
        assert host.name == "web01"

        page = list_hosts.sync(client=client)
        assert isinstance(page, models.PageHostPublic), page
        assert [(h.name, h.rack) for h in page.data] == [("web01", "r1")]
        assert isinstance(page.data[0], models.HostPublic)
        assert page.data[0].nics[0].mac == "52:54:00:12:34:56"

        templates = list_templates.sync(client=client, kind="kickstart")
        assert isinstance(templates, models.TemplateList), templates
        assert templates.count == len(templates.data) > 0
        assert {(t.kind, t.source) for t in templates.data} == {("kickstart", "builtin")}

        missing = get_rack.sync_detailed(client=client, rack="nope")
        assert missing.status_code == 404
        assert isinstance(missing.parsed, models.Error)
        assert missing.parsed.error == "not_found"

    with generated.Client(base_url=live.url) as anonymous:  # no token: our 401 envelope, typed
        health = healthz.sync(client=anonymous)
        assert isinstance(health, models.Health) and health.status == "ok"
        denied = list_hosts.sync_detailed(client=anonymous)
        assert denied.status_code == 401
        assert isinstance(denied.parsed, models.Error)
        assert denied.parsed.error == "unauthorized"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_need_no_outside_url(live, page: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{live.url}{page}", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not OUTSIDE_URL.search(html), OUTSIDE_URL.findall(html)
    assert "/openapi.json" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        got = httpx.get(f"{live.url}{asset}", timeout=10)
        assert got.status_code == 200, asset
        assert len(got.content) > 500, asset
        kind = {".js": "javascript", ".css": "text/css", ".png": "image/png"}[Path(asset).suffix]
        assert kind in got.headers["content-type"], (asset, got.headers["content-type"])
    if page == "/docs":
        assert '"validatorUrl": null' in html  # no badge fetched from swagger.io
