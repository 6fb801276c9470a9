"""Processes of bench/scale: role servers on PostgreSQL, uvicorn apps, CPU of process trees.

Every server listens on 127.0.0.1 on a free port, gets its settings as PROV_*
variables (tests.support.serve.ServeProcess builds the environment: nothing of
the caller's PROV_* leaks in) and is stopped by its own process group id.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.support.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
_TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- CPU
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(pid: int, *, reaped: bool = False) -> float:
    """user + system CPU seconds of one live process (proc(5) fields 14, 15); with ``reaped`` also
    its waited-for children's (16, 17: ssh-keyscan runs, PostgreSQL backends that exited)."""
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped else 0)
    return ticks / _TICK


def descendants(pid: int) -> list[int]:
    """pid's live children, grandchildren, ... (uvicorn's worker processes, multiprocessing helpers)."""
    parent: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat(int(d.name))
            if f is not None:
                parent.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in parent.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU of a process and every live descendant, each with its reaped children."""
    return sum(cpu_s(p, reaped=True) for p in [pid, *descendants(pid)])


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process: other users' work too),
    from /proc/stat's first line: total minus idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


def children_cpu_s() -> float:
    """CPU of this process's reaped children (wrk, once subprocess.run has waited for it)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """CPU seconds of named process trees, read before and after a measurement."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def read(self) -> dict[str, float]:
        """Each tree's CPU, and "machine": every core's busy time (see machine_busy_s)."""
        return {**{name: tree_cpu_s(pid) for name, pid in self.pids.items()}, "machine": machine_busy_s()}

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


def postmaster_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().split()[0])


# --------------------------------------------------------------------------- servers
def serve_supports(flag: str) -> bool:
    """Does this checkout's ``prov serve`` take ``flag``? (--role/--workers land while this bench is written.)"""
    out = subprocess.run([sys.executable, "-m", "provisioner.cli.main", "serve", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, env={**os.environ, "COLUMNS": "200"})
    return flag in out.stdout


class RoleServer(ServeProcess):
    """``prov serve ARGS`` (e.g. --role api --workers 4) on PostgreSQL, or any other argv serving HTTP.

    ``argv`` replaces the command when given (the uvicorn fallback before --workers landed, the bare app);
    ``ready`` is the path polled until it answers 200 (None: a headless role, up once started)."""

    def __init__(self, data_dir: Path, *, args: Sequence[str] = (), argv: Sequence[str] | None = None,
                 settings: Mapping[str, object] | None = None, extra_env: Mapping[str, str] | None = None,
                 ready: str | None = "/healthz") -> None:
        super().__init__(data_dir, settings=settings)
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "provisioner.cli.main", "serve",
                                                         *args]
        self.argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.env.update({"PYTHONPATH": str(ROOT), **(extra_env or {})})
        self.ready = ready

    def start(self, timeout: float = 60.0) -> RoleServer:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.data_dir, start_new_session=True)
        self.starts += 1
        if self.ready is None:
            return self
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._reap()
                raise RuntimeError(f"{self.argv[2:6]} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready}", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.argv[2:6]} did not answer on {self.url} in {timeout:g}s: "
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def first_token(self) -> str:
        if not self.token:
            self.token = self._read_first_start_token()
        return self.token


def uvicorn_argv(factory: str, workers: int) -> list[str]:
    """uvicorn as ``prov serve`` runs it (provisioner/server.py _uvicorn_options): no server header,
    no proxy headers; prov writes its access lines through its own logging, the bare app has none."""
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", "{port}",
            "--workers", str(workers), "--no-server-header", "--no-proxy-headers", "--log-level", "warning"]


def stop_all(servers: Sequence[ServeProcess]) -> None:
    for s in servers:
        try:
            s.stop()
        except (OSError, subprocess.SubprocessError):
            if s.proc is not None and s.proc.poll() is None:
                os.killpg(s.proc.pid, signal.SIGKILL)
