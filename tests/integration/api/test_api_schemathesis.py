"""Schemathesis against our OpenAPI document on a live uvicorn server: no 5xx, on SQLite and PostgreSQL.

Only the foundation's own operations are fuzzed: other modules' endpoints
(power, install...) would drive real peers at whatever BMC address the fuzzer
invents, which our tests must never do (all traffic stays on loopback).
"""

from __future__ import annotations

import re
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.api.conftest import host_body

pytestmark = pytest.mark.integration

OWN = re.compile(
    r"^(/healthz|/readyz|/metrics|/api/v1/(racks|profiles|tasks|events)(/\{[a-z_]+\})?"
    r"|/api/v1/hosts(/\{host\}(/transition|/events)?)?)$"
)
MAX_EXAMPLES = 15
BUDGET_S = 45  # per back end; keeps the CI run bounded whatever the number of operations


def test_no_server_errors(client, live) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/racks", json={"name": "r1"}).raise_for_status()
    client.post("/api/v1/profiles", json={"name": "debian12"}).raise_for_status()
    client.post("/api/v1/hosts", json=host_body(rack="r1", profile="debian12")).raise_for_status()
    headers = {"Authorization": client.headers["Authorization"]}
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if OWN.match(op.path)]
    assert len(ops) >= 18, [op.path for op in ops]
    failures: list[str] = []
    start = time.monotonic()
    for op in ops:
        if time.monotonic() - start > BUDGET_S:
            break

        @given(case=op.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=live.url, headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:200]} (body={case.body!r:.200}, query={case.query!r:.200})")

        run()
    assert not failures, "\n".join(failures[:10])
