"""A private, throw-away PostgreSQL server for tests and benchmarks.

initdb + pg_ctl from the Debian packages into a temporary directory, listening
only on 127.0.0.1 on a free port, trust auth for the local ``prov`` role.
initdb refuses to run as root, so as root the server runs as the ``postgres``
system user (created by the Debian package). Durability is switched off
(fsync, synchronous_commit): the data is thrown away afterwards anyway.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "prov"


def find_bindir() -> Path | None:
    env = os.environ.get("PROV_PG_BINDIR")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bindir: Path
    datadir: Path
    port: int
    run_as: str | None

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def psql_exec(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, template: str | None = None) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql_exec(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self.psql_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"),
                       capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start(bindir: Path | None = None) -> PgServer:
    bindir = bindir or find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql")
    run_as = "postgres" if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="prov-pg-"))
    datadir = top / "data"
    datadir.mkdir()
    if run_as:
        pw = pwd.getpwnam(run_as)
        for p in (top, datadir):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    server = PgServer(bindir, datadir, _free_port(), run_as)
    subprocess.run(server._cmd(str(bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "--auth=trust",
                               "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
                   capture_output=True, check=True, timeout=120)
    opts = (f"-h 127.0.0.1 -p {server.port} -k {top} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200")
    try:
        subprocess.run(server._cmd(str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts,
                                   "-l", str(top / "server.log"), "-w", "-t", "60", "start"),
                       capture_output=True, check=True, timeout=90)
    except subprocess.CalledProcessError as exc:
        log = (top / "server.log").read_text() if (top / "server.log").exists() else ""
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"postgres did not start: {exc.stderr!r} {log[-2000:]}") from exc
    return server


@contextlib.contextmanager
def running() -> Iterator[PgServer]:
    server = start()
    try:
        yield server
    finally:
        server.stop()
