"""A client generated from the live OpenAPI document (openapi-python-client) does conditional
requests (issue 19, item 6): reads the ETag and X-Request-ID, sends If-Match and X-Request-ID as the
document's header parameters, and gets the 412 typed as our Error."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from tests.integration.api.test_openapi_clients import PACKAGE, backend, generated  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def test_generated_client_if_match(live, generated: Any, token: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    models = importlib.import_module(f"{PACKAGE}.models")
    create_rack = importlib.import_module(f"{PACKAGE}.api.racks.create_rack")
    get_rack = importlib.import_module(f"{PACKAGE}.api.racks.get_rack")
    update_rack = importlib.import_module(f"{PACKAGE}.api.racks.update_rack")

    with generated.AuthenticatedClient(base_url=live.url, token=token) as client:
        created = create_rack.sync_detailed(client=client, body=models.RackCreate(name="r1", site="dc1", size_u=42))
        assert created.status_code == 201 and created.headers["location"] == "/api/v1/racks/r1"
        read = get_rack.sync_detailed(client=client, rack="r1", x_request_id="gen-client-1")
        assert read.status_code == 200 and read.headers["x-request-id"] == "gen-client-1"
        tag = read.headers["etag"]
        assert tag == created.headers["etag"]

        ok = update_rack.sync_detailed(client=client, rack="r1", body=models.RackUpdate(site="dc2"), if_match=tag)
        assert ok.status_code == 200 and isinstance(ok.parsed, models.RackPublic) and ok.parsed.site == "dc2"
        stale = update_rack.sync_detailed(client=client, rack="r1", body=models.RackUpdate(site="dc3"), if_match=tag)
        assert stale.status_code == 412
        assert isinstance(stale.parsed, models.Error) and stale.parsed.error == "precondition_failed"
        assert get_rack.sync(client=client, rack="r1").site == "dc2"
        cached = get_rack.sync_detailed(client=client, rack="r1", if_none_match=ok.headers["etag"])
        assert cached.status_code == 304 and cached.content == b""
