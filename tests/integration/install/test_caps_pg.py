"""Caps hold across conductors on PostgreSQL (issue 14, guarantees).

* global: an api process and two ``prov serve --role conductor`` processes, ``install_concurrency``
  2 (the DBOS ``install`` queue's global concurrency), 6 manual-power hosts installed at once with
  the test playing each installer over HTTP (as bench/scale's workflow part) and one real sshd as
  every host's installed OS: from the install tasks' start/finish timestamps, never more than 2
  in flight (and 2 reached), every host ends active.
* per BMC: two power services (each its own in-process lock, as two conductors have) calling the
  same BMC endpoint never overlap (conductor/bmc_lock.py: an advisory lock), two endpoints do.
* per rack: the rack task is one workflow counting its own installs (conductor/rack.py): its cap
  does not depend on which conductor runs the installs; nothing extra to test here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from provisioner import migrate
from provisioner.conductor import bmc_lock
from provisioner.conductor.power import PowerService
from provisioner.drivers.power.base import BmcSpec
from provisioner.settings import Settings
from tests.support import pg
from tests.support.helpers import free_port, require_binary, require_root
from tests.support.install_faults import SSHD, Installer, Sshd
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghij test@prov"
CAP, HOSTS = 2, 6


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


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])  # an end sorts before a start
    peak = cur = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    return peak


def test_global_install_cap_holds_across_two_conductors(tmp_path: Path, pg_server: pg.PgServer) -> None:
    require_binary(SSHD, "ssh-keygen", "ssh-keyscan")
    require_root()
    name = pg_server.create_database()
    sshd = Sshd(tmp_path / "sshd", free_port())
    api = ServeProcess(tmp_path / "api" / "data", settings={
        "database_url": pg_server.url(name), "secret_key": Fernet.generate_key().decode(), "roles": "api",
        "install_concurrency": CAP, "engine_poll_s": 0.05, "install_wait_timeout": 120.0,
        "ssh_wait_timeout": 120.0, "timeout_check_interval": 1.0, "rate_limit_exempt": '["127.0.0.0/8"]'})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sshd.start()
        api.start()
        c = api.client()
        procs = [_conductor(api, tmp_path / f"conductor{i}") for i in (1, 2)]
        c.post("/api/v1/profiles", json={
            "name": "deb", "os_family": "debian", "install_method": "preseed", "kernel_url": "images/debian/linux",
            "initrd_url": "images/debian/initrd.gz", "params": {"ssh_authorized_keys": [SSH_KEY],
                                                                "ssh_port": sshd.port}})
        macs = {f"cap{i}": f"52:54:00:6c:00:{i:02x}" for i in range(HOSTS)}
        for host, mac in macs.items():
            c.post("/api/v1/hosts", json={"name": host, "bmc": {"kind": "manual"}, "profile": "deb",
                                          "ip_address": "127.0.0.1",
                                          "nics": [{"mac": mac, "name": "eth0", "boot": True, "ip": "127.0.0.1"}]})
            c.post(f"/api/v1/hosts/{host}/verify")
        deadline = time.monotonic() + 60
        while len([m for m in c.get("/api/v1/cluster")["members"]
                   if "conductor" in m["roles"] and m["status"] == "live"]) < 2:
            assert time.monotonic() < deadline, "two conductors never joined"
            time.sleep(0.3)
        for host in macs:
            c.post(f"/api/v1/hosts/{host}/install", json={})
        played: set[str] = set()
        errors: list[str] = []

        def play(host: str) -> None:
            try:
                Installer(api.url, macs[host]).netboot().install()
            except Exception as exc:  # played again on the next pass
                errors.append(f"{host}: {exc}")
                played.discard(host)

        threads: list[threading.Thread] = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            hosts = c.get("/api/v1/hosts", params={"limit": 100})["data"]
            states = {h["name"]: h["state"] for h in hosts}
            for host, st in states.items():
                if st == "install-wait" and host not in played:
                    played.add(host)
                    t = threading.Thread(target=play, args=(host,), daemon=True)
                    t.start()
                    threads.append(t)
            if all(st in ("active", "install-failed") for st in states.values()):
                break
            time.sleep(0.3)
        assert all(st == "active" for st in states.values()), (states, errors[:3])
        tasks = list(c.get("/api/v1/tasks", params={"kind": "install", "limit": 100})["data"])
        assert len(tasks) == HOSTS and all(t["status"] == "succeeded" for t in tasks), tasks
        spans = [(_ts(t["started_at"]), _ts(t["finished_at"])) for t in tasks]
        peak = max_overlap(spans)
        assert peak <= CAP, (peak, spans)
        assert peak == CAP, f"the cap was never reached: {spans}"  # the test did exercise it
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        api.kill()
        sshd.stop()
        pg_server.drop_database(name)


class _Slow:
    """A power driver whose get_power_state takes 0.3 s and records its span."""

    spans: dict[str, list[tuple[float, float]]] = {}
    lock = threading.Lock()

    def __init__(self, spec: BmcSpec) -> None:
        self.spec = spec

    def get_power_state(self) -> Any:
        from provisioner.drivers.power.base import PowerState

        t0 = time.monotonic()
        time.sleep(0.3)
        with self.lock:
            self.spans.setdefault(self.spec.address, []).append((t0, time.monotonic()))
        return PowerState.ON

    def close(self) -> None:
        pass


def test_one_call_per_bmc_across_power_services(tmp_path: Path, pg_server: pg.PgServer) -> None:
    name = pg_server.create_database()
    settings = Settings(data_dir=tmp_path, database_url=pg_server.url(name), power_call_timeout=5.0)
    try:
        migrate.upgrade(settings)
        services = [PowerService(settings, driver_factory=_Slow) for _ in range(2)]  # two conductors' locks
        _Slow.spans.clear()

        def calls(svc: PowerService, address: str) -> None:
            spec = BmcSpec(kind="fake", address=address, port=623, username="u", password="p", options={},
                           timeout=5.0)
            for _ in range(3):
                svc.call(spec, lambda d: d.get_power_state(), op="get_power_state")

        threads = [threading.Thread(target=calls, args=(svc, addr)) for svc in services
                   for addr in ("10.0.0.1", "10.0.0.2")]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        wall = time.monotonic() - t0
        for addr in ("10.0.0.1", "10.0.0.2"):
            spans = _Slow.spans[addr]
            assert len(spans) == 6 and max_overlap(spans) == 1, (addr, spans)
        # the two endpoints ran side by side: 6 calls each of 0.3 s, not 12 in a row
        assert wall < 12 * 0.3, wall
    finally:
        bmc_lock.dispose()
        pg_server.drop_database(name)
