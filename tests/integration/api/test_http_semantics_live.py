"""If-Match under real concurrency, on SQLite and PostgreSQL, and X-Request-ID in a real access log.

The unit tests (tests/unit/api/test_http_semantics.py) prove the lock on SQLite through the
TestClient. Here: the in-process server on both back ends (PostgreSQL's lock is SELECT ... FOR
UPDATE, SQLite's a no-op UPDATE), with the write slowed so the second request is checked while
the first is writing and with many clients at full speed; then a real ``prov serve`` subprocess:
its access log names each request's id, concurrent clients with one ETag still make exactly one
change, and ``prov rack list --site`` filters for real.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner import crud
from provisioner.settings import Settings
from tests.integration.api.conftest import host_body
from tests.support.cli import prov_executable
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.integration

HOST = "/api/v1/hosts/web01"


def _race(url: str, headers: dict[str, str], bodies: list[dict[str, Any]], if_match: str) -> list[httpx.Response]:
    """One PATCH per body, all at once, each from its own client, all with ``if_match``."""
    barrier = threading.Barrier(len(bodies))
    out: list[httpx.Response] = []

    def go(i: int, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as h:
            barrier.wait()
            out.append(h.patch(HOST, json=body, headers={"If-Match": if_match, "X-Request-ID": f"race-{i}"}))

    threads = [threading.Thread(target=go, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return out


def _one_winner(answers: list[httpx.Response], final: httpx.Response) -> None:
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] + [412] * (len(answers) - 1), [(r.status_code, r.text[:200]) for r in answers]
    winner = next(r for r in answers if r.status_code == 200)
    assert final.headers["etag"] == winner.headers["etag"] and final.json()["roles"] == winner.json()["roles"]
    for r in answers:
        if r.status_code == 412:
            assert r.json()["error"] == "precondition_failed"


def test_slowed_writer_one_etag_one_winner(client, live, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    tag = client.get(HOST).headers["etag"]
    original = crud.update_host
    writes: list[float] = []

    def slow(*args: Any, **kw: Any) -> Any:
        writes.append(time.monotonic())
        time.sleep(0.5)  # holding the row's lock: the other request's check must wait for this write
        return original(*args, **kw)

    monkeypatch.setattr(crud, "update_host", slow)
    answers = _race(live.url, dict(client.headers), [{"roles": ["web"]}, {"roles": ["db"]}], tag)
    _one_winner(answers, client.get(HOST))
    assert len(writes) == 1


@pytest.mark.parametrize("clients", [8])
def test_many_clients_one_etag_one_winner(client, live, clients: int) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/v1/hosts", json=host_body()).raise_for_status()
    for _round in range(3):
        tag = client.get(HOST).headers["etag"]
        bodies = [{"roles": [f"r{_round}-{i}"]} for i in range(clients)]
        _one_winner(_race(live.url, dict(client.headers), bodies, tag), client.get(HOST))


def test_prov_serve_request_ids_races_and_rack_site(settings: Settings, tmp_path: Path) -> None:
    extra = {"database_url": settings.database_url} if settings.database_url else {}
    with ServeProcess(tmp_path / "serve", settings=extra) as serve:
        auth = {"Authorization": f"Bearer {serve.token}"}
        with httpx.Client(base_url=serve.url, headers=auth, timeout=30) as h:
            h.post("/api/v1/hosts", json=host_body()).raise_for_status()
            r = h.get(HOST, headers={"X-Request-ID": "from-the-client-1"})
            assert r.headers["x-request-id"] == "from-the-client-1"
            generated = h.get(HOST, headers={"X-Request-ID": "no spaces allowed"}).headers["x-request-id"]
            tag = r.headers["etag"]
            answers = _race(serve.url, auth, [{"roles": [f"c{i}"]} for i in range(6)], tag)
            _one_winner(answers, h.get(HOST))
            for name, site in (("r1", "dc1"), ("r2", "dc2"), ("r3", "dc2")):
                h.post("/api/v1/racks", json={"name": name, "site": site}).raise_for_status()
        env = {"PROV_URL": serve.url, "PROV_TOKEN": serve.token, "PROV_CLIENT_CONFIG": str(tmp_path / "c.yaml"),
               "PATH": "/usr/bin:/bin"}
        out = subprocess.run([prov_executable(), "rack", "list", "--site", "dc2", "-o", "name"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["r2", "r3"]
        time.sleep(0.2)  # the access lines of the last requests
        log = serve.log_tail(chars=1_000_000)
    access = [line for line in log.splitlines() if "uvicorn.access" in line]
    assert any('"GET /api/v1/hosts/web01 HTTP/1.1" 200' in line and line.endswith("[request_id=from-the-client-1]")
               for line in access), access[-10:]
    assert any(line.endswith(f"[request_id={generated}]") for line in access)
    assert "no spaces allowed" not in log
    for i in range(6):
        assert sum(line.endswith(f"[request_id=race-{i}]") and "PATCH /api/v1/hosts/web01" in line
                   for line in access) == 1, i
