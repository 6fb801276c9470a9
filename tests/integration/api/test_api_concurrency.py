"""Two requests moving one host at once: exactly one wins, the other gets 409 (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import httpx
import pytest
from sqlmodel import Session

from provisioner import crud, lifecycle
from provisioner.db import get_engine
from provisioner.errors import Conflict
from tests.integration.api.conftest import host_body

pytestmark = pytest.mark.integration


def test_compare_and_set_two_sessions(client, settings) -> None:  # type: ignore[no-untyped-def]
    """Both sessions read the host, then both try to move it: the second loses the compare-and-set."""
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    engine = get_engine(settings)
    s1, s2 = Session(engine, expire_on_commit=False), Session(engine, expire_on_commit=False)
    try:
        h1 = crud.get_host(s1, "web01")
        h2 = crud.get_host(s2, "web01")
        s1.commit()  # end the read transactions (PostgreSQL) before writing
        s2.commit()
        lifecycle.advance(s1, h1, "maintain", actor="one", settings=settings)
        with pytest.raises(Conflict):
            lifecycle.advance(s2, h2, "maintain", actor="two", settings=settings)
    finally:
        s1.close()
        s2.close()
    events = client.get("/api/v1/hosts/web01/events").json()["data"]
    assert [e["actor"] for e in events if e["event"] == "maintain"] == ["one"]


@pytest.mark.parametrize("rounds", [8])
def test_concurrent_http_transitions(client, live, rounds) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    headers = dict(client.headers)
    for i in range(rounds):
        event = "maintain" if i % 2 == 0 else "unmaintain"
        barrier = threading.Barrier(2)
        codes: list[int] = []
        bodies: list[dict] = []  # type: ignore[type-arg]

        def go() -> None:
            with httpx.Client(base_url=live.url, headers=headers, timeout=30) as h:
                barrier.wait()
                r = h.post("/api/v1/hosts/web01/transition", json={"event": event})
            codes.append(r.status_code)
            bodies.append(r.json())

        threads = [threading.Thread(target=go) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 409], (codes, bodies)
        lost = next(b for b in bodies if "error" in b)
        assert lost["current_state"] in ("maintenance", "enrolled") and "allowed_events" in lost
    events = client.get("/api/v1/hosts/web01/events").json()["data"]
    assert len([e for e in events if e["event"] in ("maintain", "unmaintain")]) == rounds
