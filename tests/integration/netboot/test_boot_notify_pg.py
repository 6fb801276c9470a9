"""Boot changes on PostgreSQL reach a boot agent's listener in under 1 s, across processes,
and the listener comes back after the database restarts (issue 14, provisioner/changes.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import changes, migrate
from provisioner.settings import Settings
from tests.support import pg

# Commits a NIC (and its host) in a process of its own, as an API worker would, and prints
# the wall clock right after the commit returned.
WRITER = """
import sys, time
from provisioner.db import session_scope
from provisioner.models import Host, Nic
from provisioner.settings import Settings
s = Settings(data_dir=sys.argv[2], database_url=sys.argv[1])
with session_scope(s) as db:
    h = Host(name=sys.argv[3], netboot=True)
    db.add(h)
    db.commit()
    db.add(Nic(host_id=h.id, mac=sys.argv[4], name="eth0", boot=True, ip="10.99.0.5"))
    db.commit()
    print(time.time(), flush=True)
"""


@pytest.fixture(scope="module")
def server() -> Iterator[pg.PgServer]:
    if pg.find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    with pg.running() as srv:
        yield srv


@pytest.fixture
def pg_settings(server: pg.PgServer, tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, database_url=server.url(server.create_database()))
    migrate.upgrade(s)
    return s


class Heard:
    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []
        self.cond = threading.Condition()

    def __call__(self, tables: str) -> None:
        with self.cond:
            self.events.append((time.time(), tables))
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float) -> tuple[float, str] | None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(ev[1]):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def _write(s: Settings, name: str, mac: str) -> float:
    out = subprocess.run([sys.executable, "-c", WRITER, s.db_url, str(s.data_dir), name, mac],
                         capture_output=True, text=True, check=True, timeout=60)
    return float(out.stdout.split()[-1])


def test_change_from_another_process_heard_under_1s(pg_settings: Settings):
    heard = Heard()
    listener = changes.Listener(pg_settings.db_url, heard).start()
    try:
        assert listener.listening.wait(10)
        heard.events.clear()
        committed = _write(pg_settings, "n1", "52:54:00:10:00:01")
        ev = heard.wait_for(lambda t: "nic" in t, 5)
        assert ev is not None, heard.events
        latency = ev[0] - committed
        print(f"boot change latency {latency * 1000:.1f} ms")
        assert latency < 1.0
    finally:
        listener.stop()


def test_listener_reconnects_after_restart(server: pg.PgServer, pg_settings: Settings):
    heard = Heard()
    listener = changes.Listener(pg_settings.db_url, heard).start()
    try:
        assert listener.listening.wait(10)
        assert listener.connects == 1
        log = server.datadir.parent / "restart.log"
        subprocess.run(server._cmd(str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m", "fast",
                                   "-l", str(log), "-w", "-t", "60", "restart"),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, timeout=90)
        deadline = time.monotonic() + 20
        while listener.connects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.connects >= 2, "the listener did not reconnect"
        assert heard.wait_for(lambda t: t == "*", 1) is not None  # told to resync after the outage
        heard.events.clear()
        committed = _write(pg_settings, "n2", "52:54:00:10:00:02")
        ev = heard.wait_for(lambda t: "nic" in t, 5)
        assert ev is not None and ev[0] - committed < 1.0
    finally:
        listener.stop()


def test_rollback_sends_nothing(pg_settings: Settings):
    from provisioner.db import session_scope
    from provisioner.models import Host

    heard = Heard()
    listener = changes.Listener(pg_settings.db_url, heard).start()
    try:
        assert listener.listening.wait(10)
        heard.events.clear()
        with session_scope(pg_settings) as db:
            db.add(Host(name="gone", netboot=True))
            db.flush()
            db.rollback()
        assert heard.wait_for(lambda t: "host" in t, 1.0) is None
    finally:
        listener.stop()
