"""Crashes mid-change on PostgreSQL with real processes (issue 14, guarantees).

* An API process SIGKILLed inside an install request, between the Task row's commit and the
  workflow's enqueue (held there by the test: it locks DBOS's ``workflow_status`` table, so the
  enqueue's INSERT waits): the client gets an error, not a 202; the half-done change (host
  installing, a task row without a workflow) is repaired by the conductors' timeouts job
  (engine.lifecycle.fail_stale_orphans: task failed, host install-failed, a history line saying
  why) and the client's retry is accepted and runs.
* PostgreSQL restarted (pg_ctl restart on the test's own server) while a conductor installs a
  rack's hosts: every host ends active or install-failed with the reason in its history;
  none stays transient.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from provisioner import states as S
from provisioner.conductor.engine.schedules import ORPHAN_GRACE_S
from tests.support import pg
from tests.support.helpers import free_port, require_binary, require_root
from tests.support.install_faults import SSHD, Installer, Sshd
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghij test@prov"


@pytest.fixture(scope="module")
def pg_server() -> Iterator[pg.PgServer]:
    if pg.find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    server = pg.start()
    try:
        yield server
    finally:
        server.stop()


def _conductor(api: ServeProcess, data_dir: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True)
    env = {**api.env, "PROV_DATA_DIR": str(data_dir), "PROV_CONFIG": str(data_dir / "prov.yaml")}
    env.pop("PROV_ROLES", None)
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115 - the process keeps it
    return subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", "serve", "--role", "conductor"],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=data_dir, start_new_session=True)


class Env:
    def __init__(self, tmp_path: Path, server: pg.PgServer, **settings: object) -> None:
        self.server, self.tmp_path = server, tmp_path
        self.db = server.create_database()
        self.url = server.url(self.db)
        self.api = ServeProcess(tmp_path / "api" / "data", settings={
            "database_url": self.url, "secret_key": Fernet.generate_key().decode(), "roles": "api",
            "engine_poll_s": 0.05, "install_wait_timeout": 120.0, "ssh_wait_timeout": 120.0,
            "timeout_check_interval": 1.0, "rate_limit_exempt": '["127.0.0.0/8"]', **settings})
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sshd = Sshd(tmp_path / "sshd", free_port())

    def start(self, conductors: int = 1) -> Any:
        self.sshd.start()
        self.api.start()
        c = self.api.client(timeout=30)
        self.procs = [_conductor(self.api, self.tmp_path / f"conductor{i}") for i in range(conductors)]
        c.post("/api/v1/profiles", json={
            "name": "deb", "os_family": "debian", "install_method": "preseed", "kernel_url": "images/debian/linux",
            "initrd_url": "images/debian/initrd.gz", "params": {"ssh_authorized_keys": [SSH_KEY],
                                                                "ssh_port": self.sshd.port}})
        deadline = time.monotonic() + 60
        while len([m for m in c.get("/api/v1/cluster")["members"]
                   if "conductor" in m["roles"] and m["status"] == "live"]) < conductors:
            assert time.monotonic() < deadline, "the conductors never joined"
            time.sleep(0.3)
        return c

    def hosts(self, c: Any, n: int, rack: str | None = None) -> dict[str, str]:
        macs = {f"cr{i}": f"52:54:00:7c:00:{i:02x}" for i in range(n)}
        for host, mac in macs.items():
            body: dict[str, Any] = {"name": host, "bmc": {"kind": "manual"}, "profile": "deb",
                                    "ip_address": "127.0.0.1",
                                    "nics": [{"mac": mac, "name": "eth0", "boot": True, "ip": "127.0.0.1"}]}
            if rack:
                body["rack"] = rack
            c.post("/api/v1/hosts", json=body)
            c.post(f"/api/v1/hosts/{host}/verify")
        return macs

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.api.kill()
        self.sshd.stop()
        self.server.drop_database(self.db)


@pytest.fixture
def env(tmp_path: Path, pg_server: pg.PgServer) -> Iterator[Env]:
    require_binary(SSHD, "ssh-keygen", "ssh-keyscan")
    require_root()
    e = Env(tmp_path, pg_server)
    try:
        yield e
    finally:
        e.close()


def _play(api_url: str, macs: dict[str, str], c: Any, timeout: float) -> dict[str, str]:
    """The installers of every host that lists as install-wait, until none is transient."""
    played: set[str] = set()

    def play(host: str) -> None:
        try:
            Installer(api_url, macs[host]).netboot().install()
        except Exception:
            time.sleep(1)
            played.discard(host)  # played again on the next pass

    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            states = {h["name"]: h["state"] for h in c.get("/api/v1/hosts", params={"limit": 100})["data"]}
        except Exception:  # the database restarting under the api
            time.sleep(0.5)
            continue
        for host, st in states.items():
            if st == S.INSTALL_WAIT and host not in played:
                played.add(host)
                threading.Thread(target=play, args=(host,), daemon=True).start()
        if states and all(st not in S.TRANSIENT for st in states.values()):
            return states
        time.sleep(0.3)
    raise AssertionError(f"hosts still transient: {states}")


def test_an_api_process_killed_mid_install_request(env: Env) -> None:
    c = env.start()
    env.hosts(c, 1)
    lock = psycopg.connect(f"host=127.0.0.1 port={env.server.port} user={pg.SUPERUSER} dbname={env.db}")
    lock.execute("LOCK TABLE dbos.workflow_status IN EXCLUSIVE MODE")  # the enqueue's INSERT waits
    outcome: list[object] = []

    def request() -> None:
        try:
            outcome.append(httpx.post(f"{env.api.url}/api/v1/hosts/cr0/install", json={}, timeout=60,
                                      headers={"Authorization": f"Bearer {env.api.token}"}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    t = threading.Thread(target=request)
    t.start()
    engine = create_engine(env.url)
    try:
        deadline = time.monotonic() + 30
        with engine.connect() as conn:
            while not conn.execute(text("select count(*) from task where kind = 'install'")).scalar():
                assert time.monotonic() < deadline, "the install request never wrote its task row"
                time.sleep(0.05)
                conn.rollback()
        env.api.kill()  # SIGKILL inside the request: the row is committed, the enqueue is not
        lock.rollback()
        t.join(30)
        assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome  # never a 202
        env.api.start()
        # the conductors' timeouts job repairs it within the grace + a tick; the retry then runs
        deadline = time.monotonic() + ORPHAN_GRACE_S + 40
        while True:
            try:
                task = c.post("/api/v1/hosts/cr0/install", json={})
                break
            except Exception as exc:
                assert time.monotonic() < deadline, f"the retry was never accepted: {exc}"
                time.sleep(0.5)
        history = c.get("/api/v1/hosts/cr0/events", params={"limit": 100})["data"]
        lines = [e["message"] for e in history]
        assert any("the API process stopped before this task's workflow was queued" in m for m in lines), lines
        tasks = c.get("/api/v1/tasks", params={"host": "cr0", "kind": "install"})["data"]
        first = min(tasks, key=lambda x: x["id"])
        assert first["status"] == S.TASK_FAILED and "API process stopped" in (first["error"] or ""), first
        deadline = time.monotonic() + 60
        while c.get("/api/v1/hosts/cr0")["state"] != S.INSTALL_WAIT:
            assert time.monotonic() < deadline, c.get(f"/api/v1/tasks/{task['id']}")
            time.sleep(0.3)
    finally:
        lock.close()
        engine.dispose()


def test_postgres_restarted_mid_rack(env: Env) -> None:
    c = env.start()
    c.post("/api/v1/racks", json={"name": "r1"})
    macs = env.hosts(c, 4, rack="r1")
    c.post("/api/v1/racks/r1/provision", json={"concurrency": 4})
    deadline = time.monotonic() + 60
    while not [h for h in c.get("/api/v1/hosts", params={"limit": 100})["data"] if h["state"] == S.INSTALL_WAIT]:
        assert time.monotonic() < deadline, "no host reached install-wait"
        time.sleep(0.3)
    srv = env.server
    # -l: the restarted server's output goes to its log, not to our pipe (pg_ctl would wait on it)
    subprocess.run(srv._cmd(str(srv.bindir / "pg_ctl"), "-D", str(srv.datadir), "-m", "fast", "-w", "-t", "60",
                            "-l", str(srv.datadir.parent / "server.log"), "restart"),
                   capture_output=True, check=True, timeout=90)
    states = _play(env.api.url, macs, c, timeout=180)
    for host, st in states.items():
        assert st in (S.ACTIVE, S.INSTALL_FAILED), (host, st)
        if st == S.INSTALL_FAILED:
            h = c.get(f"/api/v1/hosts/{host}")
            assert h["last_error"], h
    print(f"\nafter a PostgreSQL restart mid-rack: {states}")
