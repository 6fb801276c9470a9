"""The event stream against real peers: two ``prov serve`` processes on one real PostgreSQL, read by
curl -N (an SSE client outside our code), and the CLI (``prov events --follow``, ``prov host watch``).

* a state change made through the API arrives on a stream in < 1 s (PostgreSQL and SQLite);
* a stream killed and reconnected with Last-Event-ID gets exactly the events it missed (compared with
  a stream that stayed connected);
* a change made through process A arrives on a stream of process B (LISTEN/NOTIFY);
* over the per-token cap: 429 with our error envelope;
* ``prov events --follow --host`` prints the events and ends on Ctrl-C with 130; ``prov host watch``
  follows a host to a stable (0) or failed (1) state.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session, select

from provisioner import lifecycle
from provisioner import states as S
from provisioner.db import get_engine
from provisioner.models import Host
from provisioner.settings import Settings
from tests.support import pg
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.timeout(180)


class Curl:
    """``curl -N`` on the stream; its SSE messages parsed into a queue by a reader thread."""

    def __init__(self, url: str, token: str, tmp: Path, *, last_id: int | None = None, query: str = "") -> None:
        hdr = tmp / f"hdr-{time.monotonic_ns()}"
        lines = [f"Authorization: Bearer {token}"] + ([f"Last-Event-ID: {last_id}"] if last_id is not None else [])
        hdr.write_text("\n".join(lines) + "\n")
        hdr.chmod(0o600)
        # the token from a file (-H @file), never on the command line
        self.proc = subprocess.Popen(["curl", "-sSN", "-H", f"@{hdr}", f"{url}/api/v1/events/stream{query}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.opened = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.opened.wait(10), "the stream did not open"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        data: list[str] = []
        event_id = None
        for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith("retry:"):
                self.opened.set()
            elif line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                ev = json.loads("\n".join(data))
                assert ev["id"] == event_id
                ev["_t"] = time.monotonic()
                self.events.put(ev)
                data = []
        self.opened.set()

    def take(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            out.append(self.events.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def drain(self, quiet: float = 0.7) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.events.get(timeout=quiet))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture(scope="module")
def pg_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, ServeProcess, Settings]]:
    if pg.find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    server = pg.start()
    try:
        url = server.url(server.create_database())
        common = {"database_url": url, "secret_key": Fernet.generate_key().decode()}
        a = ServeProcess(tmp_path_factory.mktemp("a") / "data", settings=common).start()
        b = ServeProcess(tmp_path_factory.mktemp("b") / "data",
                         settings={**common, "events_max_streams_per_token": 2})
        b.token = a.token  # one database, one first-start token
        b.start()
        try:
            yield a, b, Settings(data_dir=tmp_path_factory.mktemp("t"), database_url=url)
        finally:
            get_engine(Settings(data_dir=Path("/nonexistent"), database_url=url)).dispose()
            b.stop()
            a.stop()
    finally:
        server.stop()


def _api(p: ServeProcess) -> httpx.Client:
    return httpx.Client(base_url=p.url, headers={"Authorization": f"Bearer {p.token}"}, timeout=30)


def _transition(c: httpx.Client, host: str, event: str) -> None:
    r = c.post(f"/api/v1/hosts/{host}/transition", json={"event": event})
    assert r.status_code == 200, r.text


def _arrives_fast(proc: ServeProcess, watcher: ServeProcess, tmp: Path, name: str) -> None:
    with _api(proc) as c:
        assert c.post("/api/v1/hosts", json={"name": name}).status_code == 201
        curl = Curl(watcher.url, watcher.token, tmp, query=f"?host={name}&kind=host.state")
        try:
            t0 = time.monotonic()
            _transition(c, name, "maintain")
            (ev,) = curl.take(1, timeout=5)
            assert ev["kind"] == "host.state" and ev["host"] == name and ev["state"] == S.MAINTENANCE
            assert ev["_t"] - t0 < 1.0, f"arrived after {ev['_t'] - t0:.3f} s"
        finally:
            curl.close()


def test_state_change_arrives_within_a_second_pg(pg_pair: tuple[ServeProcess, ServeProcess, Settings],
                                                 tmp_path: Path) -> None:
    a, _b, _ = pg_pair
    _arrives_fast(a, a, tmp_path, "fast-pg")


def test_state_change_arrives_within_a_second_sqlite(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data") as p:
        _arrives_fast(p, p, tmp_path, "fast-lite")


def test_change_through_one_process_arrives_on_the_other(pg_pair: tuple[ServeProcess, ServeProcess, Settings],
                                                         tmp_path: Path) -> None:
    a, b, _ = pg_pair
    _arrives_fast(a, b, tmp_path, "cross-ab")
    _arrives_fast(b, a, tmp_path, "cross-ba")


def test_resume_with_last_event_id_gets_exactly_the_missed(pg_pair: tuple[ServeProcess, ServeProcess, Settings],
                                                           tmp_path: Path) -> None:
    a, b, _ = pg_pair
    hosts = [f"res-{i}" for i in range(3)]
    steady = Curl(a.url, a.token, tmp_path, query="?kind=host,inventory")  # never disconnected
    flaky = Curl(b.url, b.token, tmp_path, query="?kind=host,inventory")
    try:
        with _api(a) as ca, _api(b) as cb:
            for h in hosts:
                assert ca.post("/api/v1/hosts", json={"name": h}).status_code == 201
            seen = flaky.take(6)  # created + enrolled, per host
            flaky.close()
            last = seen[-1]["id"]
            for i, h in enumerate(hosts):  # missed while disconnected, through both processes
                _transition(ca if i % 2 else cb, h, "maintain")
                cb.post(f"/api/v1/hosts/{h}/transition", json={"event": "unmaintain"})
            resumed = Curl(b.url, b.token, tmp_path, last_id=last, query="?kind=host,inventory")
            try:
                got = resumed.take(6)
                extra = resumed.drain()
            finally:
                resumed.close()
            everything = steady.take(12) + steady.drain()
    finally:
        steady.close()
    key = [(e["id"], e["kind"], e["host"], e["state"]) for e in everything]
    assert [(e["id"], e["kind"], e["host"], e["state"]) for e in seen] == key[:6]
    assert [(e["id"], e["kind"], e["host"], e["state"]) for e in got + extra] == key[6:]
    assert [e["state"] for e in got] == [S.MAINTENANCE, S.ENROLLED] * 3
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids)


def test_per_token_cap_and_bad_input(pg_pair: tuple[ServeProcess, ServeProcess, Settings], tmp_path: Path) -> None:
    _a, b, _ = pg_pair
    s1, s2 = Curl(b.url, b.token, tmp_path), Curl(b.url, b.token, tmp_path)
    try:
        with _api(b) as c:
            r = c.get("/api/v1/events/stream")
            assert r.status_code == 429 and r.json()["error"] == "too_many_streams" and r.headers["retry-after"]
            s1.close()
            time.sleep(0.3)
            with c.stream("GET", "/api/v1/events/stream") as ok:
                assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/event-stream")
            r = c.get("/api/v1/events/stream", params={"kind": "hosts"})
            assert r.status_code == 422 and r.json()["field"] == "kind"
            r = c.get("/api/v1/events/stream", headers={"Last-Event-ID": "x"})
            assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID"
        assert httpx.get(f"{b.url}/api/v1/events/stream").status_code == 401
    finally:
        s1.close()
        s2.close()


# --------------------------------------------------------------------------- CLI
def _cli_env(p: ServeProcess, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update(PROV_URL=p.url, PROV_TOKEN=p.token, HOME=str(home))
    return env


def _prov(*args: str) -> list[str]:
    return [sys.executable, "-m", "provisioner.cli.main", *args]


def test_cli_events_follow_and_ctrl_c(pg_pair: tuple[ServeProcess, ServeProcess, Settings], tmp_path: Path) -> None:
    a, b, _ = pg_pair
    proc = subprocess.Popen(_prov("events", "--follow", "--host", "cli-f", "--json"), env=_cli_env(b, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the CLI starts and opens the stream
        with _api(a) as c:
            assert c.post("/api/v1/hosts", json={"name": "cli-f"}).status_code == 201
            _transition(c, "cli-f", "maintain")
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [(e["kind"], e["state"]) for e in lines] == [
            ("inventory", "created"), ("host.state", S.ENROLLED), ("host.state", S.MAINTENANCE)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 130 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
    # without --follow: the retained events after --after, then exit 0
    first = lines[0]["id"]
    out = subprocess.run(_prov("events", "--after", str(first), "--host", "cli-f"), env=_cli_env(a, tmp_path),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [ln.split("  ")[1] for ln in out.stdout.splitlines()] == [f"#{lines[1]['id']}", f"#{lines[2]['id']}"]


def _advance(settings: Settings, name: str, event: str) -> None:
    with Session(get_engine(settings), expire_on_commit=False) as s:
        host = s.exec(select(Host).where(Host.name == name)).one()
        lifecycle.advance(s, host, event, message=f"test: {event}", settings=settings)


@pytest.mark.parametrize(("end", "code", "final"), [(S.DONE, 0, S.AVAILABLE), (S.FAIL, 1, S.VERIFY_FAILED)])
def test_cli_host_watch(pg_pair: tuple[ServeProcess, ServeProcess, Settings], tmp_path: Path,
                        end: str, code: int, final: str) -> None:
    a, b, settings = pg_pair
    name = f"watch-{code}"
    with _api(a) as c:
        assert c.post("/api/v1/hosts", json={"name": name}).status_code == 201
    _advance(settings, name, S.VERIFY)  # the test process writes: its commit notifies every API process
    proc = subprocess.Popen(_prov("host", "watch", name), env=_cli_env(b, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == f"{name}: {S.VERIFYING}"
    t0 = time.monotonic()
    _advance(settings, name, end)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == code, err
    assert time.monotonic() - t0 < 5
    assert f"host.state  {name}  {final}" in out
    # already stable: says so and exits at once; an unknown host: 3
    done = subprocess.run(_prov("host", "watch", name, "--timeout", "5"), env=_cli_env(a, tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == f"{name}: {final}" and done.returncode == code
    missing = subprocess.run(_prov("host", "watch", "nope"), env=_cli_env(a, tmp_path), capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 3 and missing.stderr.startswith("error: ")
