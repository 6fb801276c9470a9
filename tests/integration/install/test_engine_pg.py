"""The workflow engine on PostgreSQL with real ``prov serve`` processes (issue 14, item 2).

Two controllers (conductor executors ``ctl-a`` and ``ctl-b``) on one PostgreSQL database, an
``ipmi_sim`` BMC, an ``sshd`` as the installed OS, the test as iPXE + installer over HTTP (as
test_controller_killed.py does on SQLite):

* ``ctl-a`` is SIGKILLed mid-install; ``ctl-b`` starts on the same database (and port, so the
  installer's URLs still answer), takes the dead executor's workflow over and resumes the install
  in its step: one ``install-resumed`` line, the task ends ``succeeded`` owned by ``ctl-b``.
* a killed controller restarted with its own executor id resumes its install by itself (DBOS's
  own recovery at launch), redoing the boot device before the power-on it was cut off in;
* a cancel sent to the controller that does not run the task stops it (the flag is in the row);
* a second install request to the other controller is refused with 409.

The take-over trigger here is ``engine_takeover_on_start`` (every pending workflow of another
executor): the cluster membership (provisioner/cluster.py, built separately) calls
``engine.take_over([dead])`` for executors whose heartbeat stopped instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from provisioner import states as S
from provisioner.errors import ProvError
from tests.support import pg
from tests.support.helpers import require_binary, require_root
from tests.support.install_faults import SSHD, Machine, Rig, make_machine
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

_RIG = {"install_wait_timeout": 120.0, "ssh_wait_timeout": 120.0, "timeout_check_interval": 0.5,
        "power_call_timeout": 2.0, "power_retries": 1, "engine_poll_s": 0.05}


@pytest.fixture(scope="module")
def pg_server() -> Iterator[pg.PgServer]:
    if pg.find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    server = pg.start()
    try:
        yield server
    finally:
        server.stop()


class Cluster:
    """Controllers on one database, each its own data directory; one shared secret key (BMC
    passwords are encrypted with it) and the first start's admin token."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.tmp_path, self.url = tmp_path, url
        self.key = Fernet.generate_key().decode()
        self.ctls: list[ServeProcess] = []
        self.machines: list[Machine] = []

    def controller(self, executor: str, *, port: int | None = None, **settings: object) -> ServeProcess:
        values = {**_RIG, "database_url": self.url, "secret_key": self.key, "executor_id": executor, **settings}
        ctl = ServeProcess(self.tmp_path / executor / "data", port=port, settings=values)
        if self.ctls:
            ctl.token = self.ctls[0].token  # not a first start: the database has its admin token
        self.ctls.append(ctl)
        return ctl.start()

    def rig(self, ctl: ServeProcess) -> Rig:
        rig = Rig(ctl=ctl, workdir=self.tmp_path / "rig")
        if not self.machines:
            m = make_machine(rig.workdir, "node01", 1)
            self.machines.append(m)
            rig.machines.append(m)
            rig.add_profile("deb12", ssh_port=m.ssh_port)
            rig.enroll(m, "deb12")
        rig.machines = list(self.machines)
        return rig

    def owner(self, task_id: int) -> str | None:
        """Task.owner, read from the database (the tasks API does not publish it)."""
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(text("select owner from task where id = :i"), {"i": task_id}).scalar()
        finally:
            engine.dispose()

    def close(self) -> None:
        for ctl in self.ctls:
            ctl.kill()
        for m in self.machines:
            m.stop()


@pytest.fixture
def cluster(tmp_path: Path, pg_server: pg.PgServer) -> Iterator[Cluster]:
    require_binary("ipmi_sim", "ipmitool", SSHD, "ssh-keygen", "ssh-keyscan")
    require_root()
    name = pg_server.create_database()
    c = Cluster(tmp_path, pg_server.url(name))
    try:
        yield c
    finally:
        c.close()
        pg_server.drop_database(name)


def _finish_install(rig: Rig, m: Machine, task_id: int, step: str, redo: str | None = None) -> dict[str, object]:
    task = rig.wait_task(task_id, timeout=90)
    history = rig.history(m.name)
    assert task["status"] == S.TASK_SUCCEEDED, f"{task}\n{history}"
    assert rig.host(m.name)["state"] == S.ACTIVE, history
    resumed = [e for e in rig.events(m.name) if e["event"] == "install-resumed"]
    assert len(resumed) == 1 and resumed[0]["message"].startswith(
        f"install resumed at step {step} after a controller restart"), history
    if redo is not None:
        assert f"({redo} is done again first" in resumed[0]["message"], history
    assert m.power() == "1" and m.boot() == "default", m.bmc.log()
    tasks = rig.api.get("/api/v1/tasks", params={"host": m.name, "kind": "install"})["data"]
    assert [t["id"] for t in tasks] == [task_id], "the take-over must not start a second install"
    rig.assert_settled()
    return task


def test_a_second_controller_takes_over_a_killed_ones_install(cluster: Cluster) -> None:
    a = cluster.controller("ctl-a")
    rig = cluster.rig(a)
    m = rig.machines[0]
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "wait-installer")
    assert cluster.owner(task_id) == "ctl-a"
    inst = rig.installer(m).netboot()
    inst.fetch_config()
    assert inst.report("start").status_code == 200
    a.kill()
    b = cluster.controller("ctl-b", port=a.port, engine_takeover_on_start=True)
    rig_b = cluster.rig(b)
    rig_b.wait("the task to move to ctl-b", lambda: cluster.owner(task_id) == "ctl-b", 30)
    m.sshd.start()
    r = inst.report("done")
    assert r.status_code == 200 and r.json()["state"] == S.BOOTING, r.text
    task = _finish_install(rig_b, m, task_id, "wait-installer")
    assert task["result"]["taken_over_from"] == "ctl-a"
    # the same step never ran on both: ctl-a set PXE once before it died, ctl-b never again
    events = rig_b.events(m.name)
    resumed_at = next(i for i, e in enumerate(events) if e["event"] == "install-resumed")
    assert not [e for e in events[resumed_at:] if e["event"] == "boot-device" and "pxe" in e["message"]]


def test_a_restarted_controller_resumes_its_own_install(cluster: Cluster) -> None:
    """Same executor id after the restart (a systemd unit's fixed PROV_EXECUTOR_ID): DBOS recovers
    the executor's pending workflows at launch, no take-over needed."""
    a = cluster.controller("ctl-a")
    rig = cluster.rig(a)
    m = rig.machines[0]
    m.hold()  # the chassis ignores requests: power on never confirms while we kill
    task_id = rig.install(m.name)
    rig.wait_step(task_id, "power-on")
    a.kill()
    m.hold(False)
    a.start()
    inst = rig.installer(m)
    host = rig.wait_state(m.name, S.INSTALL_WAIT, timeout=40)
    assert host["power_state"] == "on" and m.boot() == "pxe"
    inst.netboot()
    m.sshd.start()
    inst.install()
    _finish_install(rig, m, task_id, "power-on", redo="boot-pxe")
    assert cluster.owner(task_id) == "ctl-a"


def test_cancel_and_409_across_controllers(cluster: Cluster) -> None:
    a = cluster.controller("ctl-a")
    b = cluster.controller("ctl-b")
    rig_a, rig_b = cluster.rig(a), cluster.rig(b)
    m = rig_a.machines[0]
    task_id = rig_a.install(m.name)
    rig_a.wait_step(task_id, "wait-installer")
    owner = cluster.owner(task_id)
    assert owner in ("ctl-a", "ctl-b")  # either conductor may dequeue it
    # a second install, asked of the other controller: refused, nothing changed
    with pytest.raises(ProvError) as ei:
        (rig_b if owner == "ctl-a" else rig_a).install(m.name)
    assert ei.value.details.get("http_status") == 409 or ei.value.http_status == 409
    # cancel through the controller that does not run it
    other = rig_b if owner == "ctl-a" else rig_a
    other.api.post(f"/api/v1/tasks/{task_id}/cancel")
    task = other.wait_task(task_id, timeout=30)
    host = other.host(m.name)
    assert task["status"] == S.TASK_FAILED and "cancelled" in (task["error"] or ""), task
    assert host["state"] == S.INSTALL_FAILED and not host["netboot"], other.history(m.name)
    assert httpx.get(f"{a.url}/boot/ipxe/{m.mac}", timeout=10).status_code == 200
    other.assert_settled()



def _conductor(api: ServeProcess, data_dir: Path) -> subprocess.Popen[bytes]:
    """``prov serve --role conductor`` on the api's database, with the api's address as its own
    (the installer URLs it renders point at the api); no HTTP listener of its own."""
    data_dir.mkdir(parents=True)
    env = {**api.env, "PROV_DATA_DIR": str(data_dir), "PROV_CONFIG": str(data_dir / "prov.yaml")}
    env.pop("PROV_ROLES", None)
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115 - the process keeps it
    return subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", "serve", "--role", "conductor"],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=data_dir, start_new_session=True)


def test_a_live_conductor_takes_over_a_killed_ones_install_by_its_heartbeat(cluster: Cluster) -> None:
    """api + 2 conductors, no fixed executor ids: the conductor running the install is SIGKILLed;
    the other claims it dead once its heartbeat is older than the grace (cluster.claim_dead) and
    resumes the install at its step (conductor/takeover.py), within the bound the issue sets."""
    grace = {"cluster_heartbeat_interval": 0.5, "cluster_takeover_grace": 2.0}
    api = ServeProcess(cluster.tmp_path / "api" / "data", settings={
        **_RIG, **grace, "database_url": cluster.url, "secret_key": cluster.key, "roles": "api"}).start()
    cluster.ctls.append(api)
    conductors = [_conductor(api, cluster.tmp_path / f"conductor{i}") for i in (1, 2)]
    try:
        rig = cluster.rig(api)
        rig.wait("two conductors in the cluster", lambda: len([
            m for m in rig.api.get("/api/v1/cluster")["members"]
            if "conductor" in m["roles"] and m["status"] == "live"]) == 2, 60)
        m = rig.machines[0]
        task_id = rig.install(m.name)
        rig.wait_step(task_id, "wait-installer")
        first = cluster.owner(task_id)
        assert first is not None
        victim = next(p for p in conductors if str(p.pid) == first.split(":")[1])
        inst = rig.installer(m).netboot()
        inst.fetch_config()
        assert inst.report("start").status_code == 200
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed = time.monotonic()
        rig.wait("the task to move to the live conductor",
                 lambda: cluster.owner(task_id) not in (None, first), 60)
        took = time.monotonic() - killed
        assert took <= 60, took
        m.sshd.start()
        r = inst.report("done")
        assert r.status_code == 200 and r.json()["state"] == S.BOOTING, r.text
        task = _finish_install(rig, m, task_id, "wait-installer")
        assert task["result"]["taken_over_from"] == first
        dead = [x for x in rig.api.get("/api/v1/cluster")["members"] if x["id"] == first]
        assert dead and dead[0]["status"] == "dead", dead
    finally:
        for p in conductors:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
