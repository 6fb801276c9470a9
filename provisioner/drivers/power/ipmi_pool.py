"""The parent side of the IPMI driver: a pool of worker processes, one BMC call in flight per worker.

Workers are forked from a zygote (ipmi_worker.py, started once per controller
process, credentials never on its command line); the parent bounds every call
by its deadline, kills a worker that overruns, routes a BMC to the worker that
holds its session, and runs the wire probe (ipmi_probe.py) beside each call so
a closed port or dead host is ``bmc_unreachable`` and only silence is
``bmc_timeout``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from provisioner.drivers.power.base import BmcSpec
from provisioner.drivers.power.ipmi_codes import timeout_error, unreachable_error, worker_error
from provisioner.drivers.power.ipmi_probe import WireProbe, wait_for
from provisioner.errors import BmcBusy, BmcError

DEFAULT_PORT = 623  # RMCP, IPMI 2.0 §13.1
# A call may wait this many call-bounds for a free worker before it is "busy".
QUEUE_FACTOR = 3.0
# A read over a cached session that gets no answer this fast is retried once over a
# fresh login (an RMCP+ reply on a LAN takes milliseconds; pyghmi's own first
# retransmit comes after 0.5-1 s). Writes never are: a chassis reset must not repeat.
STALE_SESSION_WAIT = 1.0
_READ_ONLY = {"get_power", "get_bootdev", "ping"}

# A call over a cached session that has not answered this fast gets the wire probe
# (ipmi_probe.py) too; a fresh login (several round trips anyway) gets it at once.
PROBE_AFTER = 0.25


@dataclass
class _Worker:
    pid: int
    conn: Connection
    last_key: tuple[str, int, str] | None = None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.conn.close()


class _Zygote:
    """The process workers are forked from (started once per controller process)."""

    def __init__(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # argv carries no secret: credentials only ever travel over the workers' sockets.
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             f"from provisioner.drivers.power.ipmi_worker import _zygote_main; _zygote_main({child.fileno()})"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(child.fileno(),), close_fds=True,
        )
        child.close()
        self.ctl = parent
        self.lock = threading.Lock()

    def fork(self, timeout: float = 30.0) -> _Worker:
        import struct

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                socket.send_fds(self.ctl, [b"w"], [theirs.fileno()])
                self.ctl.settimeout(timeout)
                data = b""
                while len(data) < 4:
                    chunk = self.ctl.recv(4 - len(data))
                    if not chunk:
                        raise OSError("IPMI zygote exited")
                    data += chunk
        finally:
            theirs.close()
        (pid,) = struct.unpack("<i", data)
        return _Worker(pid, Connection(mine.detach()))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.ctl.close()
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(2)


class IpmiPool:
    """At most ``size`` worker processes; each runs one BMC call at a time."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self.killed = 0  # workers killed after a missed deadline (for tests/bench)

    def _spawn(self) -> _Worker:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = _Zygote()
            zygote = self._zygote
        return zygote.fork()

    def _acquire(self, key: tuple[str, int, str], deadline: float) -> _Worker | None:
        with self._cond:
            while True:
                for i, w in enumerate(self._idle):  # prefer the worker holding this BMC's session
                    if w.last_key == key:
                        return self._idle.pop(i)
                if self._idle:
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        try:
            return self._spawn()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, w: _Worker, ok: bool) -> None:
        with self._cond:
            if ok:
                self._idle.append(w)
            else:
                self._count -= 1
            self._cond.notify()
        if not ok:
            w.kill()

    def call(self, spec: BmcSpec, req: dict[str, Any], timeout: float) -> Any:
        if os.getpid() != self._pid:  # forked controller: start over
            self.__init__(self.size)  # type: ignore[misc]
        port = spec.port or DEFAULT_PORT
        key = (spec.address, port, spec.username or "")
        op = str(req.get("op", "call"))
        # Waiting for a free local worker is not the BMC's time: it has its own,
        # longer bound (QUEUE_FACTOR x the call bound) and ends as "busy" (retryable).
        w: _Worker | None = self._acquire(key, time.monotonic() + QUEUE_FACTOR * timeout)
        if w is None:
            raise BmcBusy(bmc=spec.label, reason=f"all {self.size} IPMI workers busy")
        started = time.monotonic()
        deadline = started + timeout
        # pyghmi cannot see ICMP errors: the probe runs beside the call and tells a closed
        # port or a dead host from a silent BMC. A fresh login is several round trips anyway,
        # so it starts at once; a call over a cached session gets it only when it is slow.
        probe = WireProbe(spec.address, port, start_at=started + (PROBE_AFTER if w.last_key == key else 0.0),
                          resolve_timeout=min(1.0, timeout / 4))
        with contextlib.closing(probe):
            ok = False
            try:
                if probe.unreachable:  # no route or no such name: nothing was sent, the worker is fine
                    ok = True
                    raise unreachable_error(spec, probe.unreachable)
                full = {
                    **req,
                    "address": spec.address,
                    "port": port,
                    "username": (spec.username or "").encode(),
                    "password": (spec.password or "").encode(),
                }
                w.conn.send(full)
                remaining = deadline - time.monotonic()
                reused = w.last_key == key and op in _READ_ONLY
                if (reused and remaining > 2 * STALE_SESSION_WAIT
                        and not wait_for(w.conn, time.monotonic() + STALE_SESSION_WAIT, probe)):
                    # The worker holds a session to this BMC that may have died with a BMC
                    # restart (the BMC then drops our packets silently and pyghmi retries
                    # for many seconds). For a read, start over with a fresh login.
                    self.killed += 1
                    old, w = w, None
                    self._release(old, False)
                    if probe.unreachable:
                        raise unreachable_error(spec, probe.unreachable)
                    w = self._acquire(key, time.monotonic() + QUEUE_FACTOR * timeout)
                    if w is None:
                        raise BmcBusy(bmc=spec.label, reason=f"all {self.size} IPMI workers busy")
                    w.conn.send({**full, "fresh": True})
                del full
                if not wait_for(w.conn, deadline, probe):
                    self.killed += 1  # the worker is stuck in pyghmi: it is killed on release
                    if probe.unreachable:
                        raise unreachable_error(spec, probe.unreachable)
                    raise timeout_error(spec, timeout, op, probe)
                kind, value = w.conn.recv()
                ok = True
                w.last_key = key
            except (EOFError, OSError) as exc:
                raise BmcError(bmc=spec.label, reason=f"IPMI worker failed ({exc.__class__.__name__})") from None
            finally:
                if w is not None:
                    self._release(w, ok)
            if kind == "ok":
                return value
            if kind in ("timeout", "unreachable"):
                # pyghmi gave up before our deadline: let the wire say why (a moment at most)
                probe.settle(min(deadline, time.monotonic() + STALE_SESSION_WAIT))
            raise worker_error(kind, spec, str(value), op, time.monotonic() - started, probe)

    def shutdown(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.kill()
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = None


_pool: IpmiPool | None = None
_pool_lock = threading.Lock()


def get_pool(size: int | None = None) -> IpmiPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = IpmiPool(size or int(os.environ.get("PROV_IPMI_WORKERS", "32")))
        elif size and size > _pool.size:
            _pool.size = size
        return _pool


def shutdown_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown()
        _pool = None
