"""deploy/'s role commands run as real processes on one PostgreSQL (issue 14, item 5).

What deploy/compose.cluster.yaml and the systemd role units start, started here on the host
exactly as written: the compose services' commands through the image's entrypoint
(deploy/container-entrypoint.sh, ``exec prov "$@"``) with the compose file's environment, and
the units' ExecStart= with their Environment= and EnvironmentFile= (a copy of
deploy/systemd/prov.env.example plus the cluster's database URL and key, mode 0640), read by
tests/support/deploy_roles the way compose and systemd read them. Only what a container or a
unit would give differently on this host is replaced: the database's address (compose's ``db``
is this test's private PostgreSQL, tests/support/pg.py), the data directory (the shared volume
or StateDirectory), the published ports (free ones) and the venv's ``prov`` for
``/opt/prov/bin/prov``. Everything starts at once, as ``compose up`` and ``systemctl start
prov.target`` do (migration and the first admin token happen once, under the start-up lock).

Checked: every api answers /healthz; /readyz lists the live members (2 conductors, 1 boot agent
with its network, the api worker processes); GET /api/v1/cluster says the same; a rack made
through one api is read through the other; the boot agent answers TFTP on its port; SIGTERM (what
``compose stop`` and systemd send) ends every process with 0 within the unit's TimeoutStopSec and
leaves every member ``stopped`` in cluster_member.

Opt-in slow tier (PROV_SLOW_TESTS=1): the compose services as containers of the image
deploy/Dockerfile builds (test_container_image.py's fixtures: a local debootstrap base, podman),
each with its service's command, environment (an --env-file, mode 0600) and confinement
(read-only root, tmpfs, no-new-privileges, every capability dropped, the shared data volume);
no compose client runs them (none is installed, and no registry serves postgres:15 here), and
the containers share the host's network (``--network host``, as that test explains), so the
database is this test's and ports are free ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.integration.deploy.test_container_image import Podman, image, podman  # noqa: F401 (fixtures)
from tests.support import deploy_roles as dr
from tests.support import pg
from tests.support.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = dr.ROOT
VENV_BIN = ROOT / ".venv" / "bin"
NETWORK = "10.10.0.0/24"
INSTANCE = "10.10.0.0-24"
# The whole cluster starts at once on a 2-core machine shared with other work: generous.
START_TIMEOUT_S = 180.0
_FIRST_TOKEN = re.compile(r"admin API token was created\. It is shown only now:\s+(\S+)")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[pg.PgServer]:
    if pg.find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with pg.running() as server:
        yield server


@pytest.fixture(autouse=True)
def _venv_prov() -> None:
    if not (VENV_BIN / "prov").exists():
        pytest.skip("no .venv/bin/prov (deploy/install.sh --dev makes it)")


@dataclass
class Member:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    stop_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = None
    signalled: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.env.get("PROV_DATA_DIR"),
                                     start_new_session=True)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.signalled = True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM to the main process (compose stop; systemd's KillMode=mixed), SIGKILL to the
        whole group if it is not gone within the stop timeout. Returns the exit code of a clean stop."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            if not self.signalled:  # one SIGTERM, as systemd and compose send: a second one may
                self.terminate()    # land after the handler is gone and kill a clean shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(self.stop_timeout)
        elif self.proc is not None:
            code = self.proc.returncode
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of this member only
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def _base_env(home: Path) -> dict[str, str]:
    # Nothing of the test's own PROV_* settings reaches the members; the venv's prov is on PATH
    # (the image has /opt/prov/bin first).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", HOME=str(home))
    return env


def _tails(members: list[Member]) -> str:
    return "\n".join(f"----- {m.name} (exit {m.proc.poll() if m.proc else None}):\n{m.log()[-2500:]}"
                     for m in members)


def _wait(what: str, members: list[Member], check: Any, timeout: float = START_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for m in members:
            if m.proc is not None and m.proc.poll() is not None:
                pytest.fail(f"{m.name} exited with {m.proc.returncode} while waiting for {what}:\n{_tails(members)}")
        with contextlib.suppress(httpx.HTTPError):
            last = check()
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f} s (last: {last!r}):\n{_tails(members)}")


def _live(url: str, want: dict[str, int]) -> list[dict[str, Any]] | None:
    ready = httpx.get(f"{url}/readyz", timeout=5)
    if ready.status_code != 200:
        return None
    members = ready.json().get("members") or []
    count = {role: sum(1 for m in members if role in m["roles"]) for role in ("api", "conductor", "boot")}
    return members if count == want else None


def _tftp_error(port: int, timeout: float = 30.0) -> bytes:
    """An RRQ for a file no boot root holds: a TFTP server answers ERROR (opcode 5, RFC 1350).
    Sent again every 2 s, as a TFTP client retransmits: the agent's member row can be up a moment
    before its TFTP socket answers (seen once under load: the cluster took 22 s to start)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        while True:
            s.sendto(b"\x00\x01no-such-file\x00octet\x00", ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(1024)
                return data
            except (TimeoutError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _member_states(server: pg.PgServer, dbname: str) -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={server.port} user={pg.SUPERUSER} dbname={dbname}") as conn:
        return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT id, state FROM cluster_member")]


@contextlib.contextmanager
def _running(members: list[Member]) -> Iterator[dict[str, int | None]]:
    codes: dict[str, int | None] = {}
    try:
        for m in members:
            m.start()
        yield codes
    finally:
        # Every member at once, as compose stop / systemctl stop prov.target do.
        for m in members:
            m.terminate()
        for m in members:
            codes[m.name] = m.stop()


def _check_cluster(members: list[Member], api_urls: list[str], tftp_port: int, want: dict[str, int]) -> None:
    """``want``: the live members per role (an api member per worker process)."""
    t0 = time.monotonic()
    for url in api_urls:
        _wait(f"/healthz on {url}", members, lambda u=url: httpx.get(f"{u}/healthz", timeout=2).status_code == 200)
    live = _wait("the live members on /readyz", members, lambda: _live(api_urls[-1], want))
    print(f"cluster of {len(members)} processes up in {time.monotonic() - t0:.1f} s: "
          f"{[(m['id'], m['roles'], m['networks']) for m in live]}")
    boot = [m for m in live if "boot" in m["roles"]]
    assert [b["networks"] for b in boot] == [[NETWORK]] and all(m["roles"] == ["boot"] for m in boot)
    tokens = {t for m in members for t in _FIRST_TOKEN.findall(m.log())}
    assert len(tokens) == 1, f"one first-start admin token for the whole cluster, got {len(tokens)}"
    auth = {"Authorization": f"Bearer {tokens.pop()}"}
    cluster = httpx.get(f"{api_urls[0]}/api/v1/cluster", headers=auth, timeout=10)
    assert cluster.status_code == 200, cluster.text
    assert cluster.json()["live"] == want
    # One database behind every api.
    made = httpx.post(f"{api_urls[-1]}/api/v1/racks", json={"name": "r1", "site": "dc1", "network": NETWORK},
                      headers=auth, timeout=10)
    assert made.status_code in (200, 201), made.text
    rack = httpx.get(f"{api_urls[0]}/api/v1/racks/r1", headers=auth, timeout=10)
    assert rack.status_code == 200 and rack.json()["network"] == NETWORK, rack.text
    reply = _tftp_error(tftp_port)
    assert reply[:2] == b"\x00\x05", reply


def test_the_compose_cluster_commands_run_on_postgresql(pg_server: pg.PgServer, tmp_path: Path) -> None:
    dbname = pg_server.create_database()
    variables = {"PROV_DB_PASSWORD": "compose-test-pw", "PROV_SECRET_KEY": Fernet.generate_key().decode()}
    services = dr.compose_services(variables)
    volume = tmp_path / "provdata"  # the provdata volume every prov service mounts
    volume.mkdir()
    entrypoint = str(dr.DEPLOY / "container-entrypoint.sh")
    members, api_urls, tftp_port = [], [], free_port()
    for name in dr.PROV_SERVICES:
        svc = services[name]
        env = {**_base_env(tmp_path), **svc.environment}
        # compose's "db" service is this test's server; the URL keeps its shape (trust auth ignores the password).
        assert env["PROV_DATABASE_URL"].endswith("@db:5432/prov")
        env["PROV_DATABASE_URL"] = env["PROV_DATABASE_URL"].replace("@db:5432/prov",
                                                                    f"@127.0.0.1:{pg_server.port}/{dbname}")
        env["PROV_DATA_DIR"] = str(volume)
        env["PROV_PORT"] = str(free_port())  # the container's 8700, published where compose says
        if "boot" in svc.command:
            env.update(PROV_TFTP_HOST="127.0.0.1", PROV_TFTP_PORT=str(tftp_port))
        else:
            env["PROV_TFTP_PORT"] = str(free_port())  # roles without boot never bind it
        if "api" in svc.command:
            api_urls.append(f"http://127.0.0.1:{env['PROV_PORT']}")
        members.append(Member(name, [entrypoint, *svc.command], env, tmp_path / f"{name}.log"))
    with _running(members) as codes:
        # 2 api services x --workers 2, 2 conductors, 1 boot agent
        _check_cluster(members, api_urls, tftp_port, {"api": 4, "conductor": 2, "boot": 1})
    assert codes == {m.name: 0 for m in members}, f"{codes}\n{_tails(members)}"
    states = _member_states(pg_server, dbname)
    assert states and {s for _, s in states} == {"stopped"}, states
    pg_server.drop_database(dbname)


def test_the_systemd_role_units_run_on_postgresql(pg_server: pg.PgServer, tmp_path: Path) -> None:
    dbname = pg_server.create_database()
    etc = tmp_path / "etc-prov"
    etc.mkdir(mode=0o750)
    env_file = etc / "prov.env"
    # README "Scaling out": the example, then the cluster's URL and key appended (umask 027: 0640).
    env_file.write_text((dr.SYSTEMD / "prov.env.example").read_text()
                        + f"PROV_DATABASE_URL={pg_server.url(dbname)}\n"
                        + f"PROV_SECRET_KEY={Fernet.generate_key().decode()}\n")
    env_file.chmod(0o640)
    tftp_port, api_port = free_port(), free_port()
    boot_env = etc / f"boot-{INSTANCE}.env"
    boot_env.write_text(f"PROV_TFTP_HOST=127.0.0.1\nPROV_TFTP_PORT={tftp_port}\n")
    files = {"/etc/prov/prov.env": env_file, f"/etc/prov/boot-{INSTANCE}.env": boot_env}
    state = tmp_path / "var-lib-prov"  # StateDirectory=prov
    state.mkdir(mode=0o750)
    members = []
    for unit, instance in (("prov-api.service", ""), ("prov-conductor.service", ""),
                           ("prov-boot@.service", INSTANCE)):
        run = dr.unit_exec(dr.SYSTEMD / unit, instance, files=files)
        assert run.argv[0] == "/opt/prov/bin/prov"
        env = {**_base_env(state), **run.environment}
        assert env["PROV_DATA_DIR"] == "/var/lib/prov" == env["HOME"]
        env.update(PROV_DATA_DIR=str(state), HOME=str(state))
        if "api" in run.argv:
            env["PROV_PORT"] = str(api_port)  # the example's 8700 may be taken on this machine
        elif "boot" not in run.argv:
            env["PROV_TFTP_PORT"] = str(free_port())
        timeout = float(dr.unit_values(dr.SYSTEMD / unit, "Service", "TimeoutStopSec")[0].rstrip("s"))
        members.append(Member(unit.replace("@", f"@{instance}"), [str(VENV_BIN / "prov"), *run.argv[1:]], env,
                              tmp_path / f"{unit}.log", stop_timeout=timeout))
    with _running(members) as codes:
        # prov-api.service's PROV_API_WORKERS=2
        _check_cluster(members, [f"http://127.0.0.1:{api_port}"], tftp_port, {"api": 2, "conductor": 1, "boot": 1})
    assert codes == {m.name: 0 for m in members}, f"{codes}\n{_tails(members)}"
    states = _member_states(pg_server, dbname)
    assert states and {s for _, s in states} == {"stopped"}, states
    pg_server.drop_database(dbname)


def _container_flags(raw: dict[str, Any], podman_: Podman) -> list[str]:
    """podman run flags for a compose service's confinement; what only compose's own network
    means (ports, sysctls, networks, depends_on, restart) is --network host here."""
    flags = [f for f in podman_.run_flags(healthcheck=not raw.get("healthcheck", {}).get("disable", False))]
    if raw.get("read_only"):
        flags.append("--read-only")
    for mount in raw.get("tmpfs", []):
        flags += ["--tmpfs", mount]
    for opt in raw.get("security_opt", []):
        flags += ["--security-opt", opt]
    for cap in raw.get("cap_drop", []):
        flags += ["--cap-drop", cap]
    for vol in raw.get("volumes", []):
        flags += ["-v", vol]  # named volumes: podman creates them in the test's own storage
    # init: true needs catatonit for podman (not installed here); docker brings its own init.
    return flags


@pytest.mark.skipif(os.environ.get("PROV_SLOW_TESTS") != "1",
                    reason="slow (builds the image from a debootstrap base, ~3-5 min): PROV_SLOW_TESTS=1")
@pytest.mark.timeout(2400)  # the image build, as test_container_image.py allows
def test_the_compose_cluster_runs_in_the_image(pg_server: pg.PgServer, podman: Podman, image: str,  # noqa: F811
                                               tmp_path: Path) -> None:
    dbname = pg_server.create_database()
    variables = {"PROV_DB_PASSWORD": "compose-test-pw", "PROV_SECRET_KEY": Fernet.generate_key().decode()}
    services = dr.compose_services(variables)
    api_urls, tftp_port, names = [], free_port(), []
    members: list[Member] = []
    try:
        for name in dr.PROV_SERVICES:
            svc = services[name]
            env = dict(svc.environment)
            env["PROV_DATABASE_URL"] = env["PROV_DATABASE_URL"].replace(
                "@db:5432/prov", f"@127.0.0.1:{pg_server.port}/{dbname}")
            env["PROV_PORT"] = str(free_port())
            env["PROV_TFTP_PORT"] = str(tftp_port if "boot" in svc.command else free_port())
            if "boot" in svc.command:
                env["PROV_TFTP_HOST"] = "127.0.0.1"
            if "api" in svc.command:
                api_urls.append(f"http://127.0.0.1:{env['PROV_PORT']}")
            env_file = tmp_path / f"{name}.env"
            env_file.touch(mode=0o600)
            env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            cname = f"prov-cluster-{name}"
            podman("run", "-d", "--name", cname, "--env-file", str(env_file), *_container_flags(svc.raw, podman),
                   image, *svc.command)
            names.append(cname)
            # The logs, for _check_cluster's token and failure messages (read after each poll).
            members.append(_ContainerMember(name, podman, cname, tmp_path / f"{name}.log"))
        _check_cluster(members, api_urls, tftp_port, {"api": 4, "conductor": 2, "boot": 1})
        for cname in names:
            podman("stop", "--time", "30", cname)
        codes = {c: json.loads(podman("inspect", c).stdout)[0]["State"]["ExitCode"] for c in names}
        assert codes == {c: 0 for c in names}, codes
        states = _member_states(pg_server, dbname)
        assert states and {s for _, s in states} == {"stopped"}, states
    finally:
        for cname in names:
            podman("rm", "--force", "--time", "5", cname, check=False)
    pg_server.drop_database(dbname)


class _ContainerMember(Member):
    """A container seen as a Member: its log is ``podman logs``; it is never a child of the test."""

    def __init__(self, name: str, podman_: Podman, container: str, log_path: Path) -> None:
        super().__init__(name, [], {}, log_path)
        self._podman, self._container = podman_, container

    def log(self) -> str:
        out = self._podman("logs", self._container, check=False)
        return out.stdout + out.stderr
