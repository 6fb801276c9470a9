"""Cluster membership with real `prov serve --role ...` processes on one PostgreSQL (issue 14).

An api with two uvicorn workers, a conductor and a boot agent (``--network 10.99.0.0/24``, TFTP
on a free port, no DHCP) start at the same moment against an empty database: it is migrated
once and one admin token is made (the start-up advisory lock). Every process shows on /readyz
and GET /api/v1/cluster with its roles and heartbeat. The conductor is then SIGKILLed: it turns
stale after the takeover grace, and two claimers racing on two connections claim it exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from sqlmodel import Session

from provisioner import cluster
from tests.support import pg
from tests.support.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NETWORK = "10.99.0.0/24"
GRACE_S = 3.0  # PROV_CLUSTER_TAKEOVER_GRACE of every process (tests shorten the 15 s default)
BEAT_S = 0.5
# Four processes start at once on a 2-core machine shared with other work: generous.
START_TIMEOUT_S = 120.0
_FIRST_TOKEN = re.compile(r"admin API token was created\. It is shown only now:\s+(\S+)")


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Proc:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.popen = subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", "serve", *self.argv],
                                      env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        assert self.popen is not None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        code = self.popen.poll()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers of this process group only
        return code

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()


@pytest.fixture
def database(pg_server: pg.PgServer) -> Iterator[str]:
    name = pg_server.create_database()  # empty: the role processes migrate it
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


def _wait(what: str, check: Callable[[], Any], procs: list[Proc], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            assert p.alive(), f"{p.name} exited: {p.log()[-3000:]}"
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, KeyError, AssertionError) as exc:
            last = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in procs)
    raise AssertionError(f"{what} within {timeout:g} s; last: {last!r}\n{logs}")


def _by_role(members: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [m for m in members if role in m["roles"]]


def test_role_processes_join_and_a_killed_conductor_is_claimed_once(database: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update(PROV_DATABASE_URL=database, PROV_DATA_DIR=str(data), PROV_CONFIG=str(data / "prov.yaml"),
               PROV_SECRET_KEY=Fernet.generate_key().decode(), PROV_LOG_JSON="false",
               PROV_POWER_SYNC_ENABLED="false", PROV_DHCP_ENABLED="false", PROV_TFTP_ENABLED="false",
               PROV_CLUSTER_HEARTBEAT_INTERVAL=str(BEAT_S), PROV_CLUSTER_TAKEOVER_GRACE=str(GRACE_S))
    boot_env = {**env, "PROV_TFTP_ENABLED": "true"}
    procs = [
        Proc("api", ["--role", "api", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)], env,
             tmp_path / "api.log"),
        Proc("conductor", ["--role", "conductor"], env, tmp_path / "conductor.log"),
        Proc("boot", ["--role", "boot", "--network", NETWORK, "--tftp-port", str(free_port())], boot_env,
             tmp_path / "boot.log"),
    ]
    api, conductor, boot = procs
    try:
        for p in procs:  # all at once: migration and the first token must not race
            p.start()

        def ready() -> dict[str, Any] | None:
            body = httpx.get(f"{url}/readyz", timeout=2).json()
            members = body.get("members") or []
            roles = {r: len(_by_role(members, r)) for r in ("api", "conductor", "boot")}
            return body if roles == {"api": 2, "conductor": 1, "boot": 1} else None

        body = _wait("/readyz lists 2 api workers, a conductor and a boot agent", ready, procs, START_TIMEOUT_S)
        started_s = time.monotonic() - t0
        assert body["status"] == "ready" and body["schema"]
        (c_brief,) = _by_role(body["members"], "conductor")
        assert c_brief["id"].split(":")[1] == str(conductor.pid) and c_brief["roles"] == ["conductor"]
        (b_brief,) = _by_role(body["members"], "boot")
        assert b_brief["networks"] == [NETWORK] and b_brief["roles"] == ["boot"]
        for m in body["members"]:
            assert m["heartbeat_age_s"] < GRACE_S and set(m) == {"id", "roles", "networks", "heartbeat_at",
                                                                "heartbeat_age_s"}
        api_pids = {int(m["id"].split(":")[1]) for m in _by_role(body["members"], "api")}
        assert len(api_pids) == 2 and api.pid not in api_pids  # two worker processes, not the supervisor

        # one admin token, printed by whichever process made it; one migration
        tokens = [m.group(1) for p in procs if (m := _FIRST_TOKEN.search(p.log()))]
        assert len(tokens) == 1, [p.log()[-1500:] for p in procs]
        engine = create_engine(database)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM apitoken")).scalar() == 1
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == body["schema"]

        headers = {"Authorization": f"Bearer {tokens[0]}"}
        view = httpx.get(f"{url}/api/v1/cluster", headers=headers, timeout=5).json()
        assert view["live"] == {"api": 2, "conductor": 1, "boot": 1}, view
        assert view["takeover_grace_s"] == GRACE_S and view["heartbeat_interval_s"] == BEAT_S
        full = {m["id"]: m for m in view["members"]}
        assert {m["id"] for m in body["members"]} == set(full)
        c_full = full[c_brief["id"]]
        assert c_full["status"] == "live" and c_full["pid"] == conductor.pid and c_full["api_url"] is None
        assert all(m["api_url"] == url for m in _by_role(view["members"], "api"))
        assert httpx.get(f"{url}/api/v1/cluster", timeout=5).status_code == 401

        # SIGKILL: no clean stop, the row stays "up" and its heartbeat ages
        conductor.kill()
        killed_at = time.monotonic()
        alive = [api, boot]

        def stale() -> bool:
            members = httpx.get(f"{url}/api/v1/cluster", headers=headers, timeout=5).json()["members"]
            return next(m for m in members if m["id"] == c_brief["id"])["status"] == "stale"

        _wait("the killed conductor reads stale", stale, alive, GRACE_S + 10)
        stale_after_s = time.monotonic() - killed_at
        assert not _by_role(httpx.get(f"{url}/readyz", timeout=2).json()["members"], "conductor")

        # two conductors claim at once, each on its own connection: one of them gets it
        got: dict[str, list[str]] = {}
        barrier = threading.Barrier(2)

        def claim(by: str) -> None:
            with Session(engine) as session:
                barrier.wait()
                got[by] = cluster.claim_dead(session, role="conductor", grace_s=GRACE_S, by=by)

        threads = [threading.Thread(target=claim, args=(f"claimer-{i}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [by for by, ids in got.items() if ids]
        assert len(got) == 2 and len(winners) == 1 and got[winners[0]] == [c_brief["id"]], got
        members = httpx.get(f"{url}/api/v1/cluster", headers=headers, timeout=5).json()["members"]
        dead = next(m for m in members if m["id"] == c_brief["id"])
        assert dead["status"] == "dead" and dead["taken_over_by"] == winners[0]
        # the live members were not claimed (api and boot have no work to take over anyway)
        with Session(engine) as session:
            assert cluster.claim_dead(session, role="boot", grace_s=GRACE_S, by="claimer-3") == []

        # a clean stop marks the member stopped
        assert boot.terminate() == 0, boot.log()[-2000:]
        members = httpx.get(f"{url}/api/v1/cluster", headers=headers, timeout=5).json()["members"]
        assert next(m for m in members if m["id"] == b_brief["id"])["status"] == "stopped"
        assert api.terminate() == 0, api.log()[-2000:]
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT id, state FROM cluster_member")).all())  # type: ignore[arg-type]
        assert sorted(states.values()) == ["dead", "stopped", "stopped", "stopped"], states
        engine.dispose()
        print(f"\ncluster started in {started_s:.1f} s; killed conductor stale after {stale_after_s:.1f} s "
              f"(grace {GRACE_S:g} s); total {time.monotonic() - t0:.1f} s")
    finally:
        for p in procs:
            p.close()
