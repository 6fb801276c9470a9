"""rack.network: the boot agent's network a rack's hosts boot from (issue 14), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


def test_a_rack_carries_its_network(client: TestClient) -> None:
    r = client.post("/api/v1/racks", json={"name": "r1", "network": "10.99.0.0/24"})
    assert r.status_code == 201 and r.json()["network"] == "10.99.0.0/24"
    assert client.post("/api/v1/racks", json={"name": "r2"}).json()["network"] is None
    r = client.patch("/api/v1/racks/r2", json={"network": "fd00:99::/64"})
    assert r.status_code == 200 and r.json()["network"] == "fd00:99::/64"
    assert client.get("/api/v1/racks/r2").json()["network"] == "fd00:99::/64"
    assert [x["network"] for x in client.get("/api/v1/racks").json()["data"]] == ["10.99.0.0/24", "fd00:99::/64"]


@pytest.mark.parametrize(("value", "words"), [
    ("10.99.0.5/24", "host bits set; the network is 10.99.0.0/24"),
    ("10.99.0.0", "prefix length"),
    ("not-a-net/24", "not a network"),
    (24, "must be a string"),
])
def test_a_bad_network_is_a_422_naming_the_field_and_changes_nothing(client: TestClient, value: object,
                                                                     words: str) -> None:
    for method, path, body in (("POST", "/api/v1/racks", {"name": "r1", "network": value}),
                               ("PATCH", "/api/v1/racks/r0", {"network": value})):
        if method == "PATCH":
            client.post("/api/v1/racks", json={"name": "r0"})
        r = client.request(method, path, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "network" and words in r.json()["message"], r.json()
    assert [x["name"] for x in client.get("/api/v1/racks").json()["data"]] == ["r0"]
    assert client.get("/api/v1/racks/r0").json()["network"] is None
