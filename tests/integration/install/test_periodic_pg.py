"""Periodic jobs run once per tick across the cluster (issue 14, item 4), with real processes.

An api process and two ``prov serve --role conductor`` processes on one PostgreSQL database
(the suite's tests/support/pg.py server), the timeout check every 1 s, power sync and the drift
check every 2 s (DBOS schedules: conductor/engine/schedules.py). Both conductors' schedulers fire
every tick; the test reads both conductors' logs ("periodic run <job> tick <time> by <executor>",
one line per run) and DBOS's workflow table and asserts that no tick ran twice and that ticks
were not lost; a host past its deadline gets exactly one timeout line in its history.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from provisioner import states as S
from tests.support import pg
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUN = re.compile(r"periodic run (\S+) tick (\S+) by (\S+):")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[pg.PgServer]:
    if pg.find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    server = pg.start()
    try:
        yield server
    finally:
        server.stop()


def conductor(api: ServeProcess, data_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    data_dir.mkdir(parents=True)
    env = {**api.env, "PROV_DATA_DIR": str(data_dir), "PROV_CONFIG": str(data_dir / "prov.yaml")}
    env.pop("PROV_ROLES", None)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the process keeps it
    proc = subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", "serve", "--role", "conductor"],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=data_dir, start_new_session=True)
    return proc, log_path


def test_each_tick_runs_once_across_two_conductors(tmp_path: Path, pg_server: pg.PgServer) -> None:
    name = pg_server.create_database()
    url = pg_server.url(name)
    api = ServeProcess(tmp_path / "api" / "data", settings={
        "database_url": url, "secret_key": Fernet.generate_key().decode(), "roles": "api",
        "timeout_check_interval": 1.0, "power_sync_enabled": True, "power_sync_interval": 2.0,
        "drift_check_interval": 2.0, "cluster_heartbeat_interval": 0.5, "cluster_takeover_grace": 5.0})
    procs: list[subprocess.Popen[bytes]] = []
    engine = create_engine(url)
    try:
        api.start()
        client = api.client()
        client.post("/api/v1/hosts", json={"name": "late01"})
        with engine.begin() as conn:  # a host whose verifying deadline passed 5 s ago
            conn.execute(text("update host set state = :st, state_entered_at = now() - interval '60 seconds', "
                              "state_deadline = now() - interval '5 seconds' where name = 'late01'"),
                         {"st": S.VERIFYING})
        logs = []
        for i in (1, 2):
            p, log = conductor(api, tmp_path / f"conductor{i}")
            procs.append(p)
            logs.append(log)
        deadline = time.monotonic() + 60
        while len([m for m in client.get("/api/v1/cluster")["members"]
                   if "conductor" in m["roles"] and m["status"] == "live"]) < 2:
            assert time.monotonic() < deadline, "two conductors never joined"
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.3)
        t0 = time.time()
        time.sleep(14)
        window = time.time() - t0
        runs = [(m.group(1), m.group(2), m.group(3), i) for i, log in enumerate(logs)
                for m in RUN.finditer(log.read_text(errors="replace"))]
        per_tick = Counter((job, tick) for job, tick, _, _ in runs)
        twice = [k for k, n in per_tick.items() if n > 1]
        assert not twice, f"ticks run more than once: {twice}"
        jobs = Counter(job for job, _ in per_tick)
        # every 1 s / 2 s over the window (the first ticks wait for the schedules to be seen)
        assert jobs["timeouts"] >= window * 0.5, jobs
        assert jobs["power-sync"] >= window / 2 * 0.4 and jobs["drift-check"] >= window / 2 * 0.4, jobs
        with engine.connect() as conn:
            rows = conn.execute(text("select workflow_uuid, status, executor_id from dbos.workflow_status "
                                     "where name = 'prov.periodic'")).all()
            moved = conn.execute(text("select count(*) from event e join host h on h.id = e.host_id "
                                      "where h.name = 'late01' and e.event = :ev"), {"ev": S.TIMEOUT}).scalar()
            state = conn.execute(text("select state from host where name = 'late01'")).scalar()
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids))
        done = {r[0] for r in rows if r[1] == "SUCCESS"}
        for job, tick in per_tick:
            assert f"sched-prov-{job}-{tick}" in done, (job, tick)
        # one history line: the tick that moved it, no other tick moved it again
        assert moved == 1 and state == S.VERIFY_FAILED, (moved, state)
        executors = {r[2] for r in rows if r[1] == "SUCCESS"}
        print(f"\nperiodic: {dict(jobs)} in {window:.1f} s, run by {len(executors)} conductor(s): "
              f"{Counter(i for *_, i in runs)}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        api.kill()
        engine.dispose()
        pg_server.drop_database(name)
