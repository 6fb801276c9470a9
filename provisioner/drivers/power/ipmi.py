"""IPMI 2.0 / RMCP+ power control through pyghmi (the only module that imports pyghmi).

pyghmi 1.6.19 runs one shared I/O thread and one session table per process,
and its client misbehaves under concurrency (see docs/field notes): packets
already received are not drained before a caller waits (stalls of ~1 s),
two locks are taken in opposite orders (deadlock), rare ~24 s logins, a
process-wide hang from toggling blocking mode on shared sockets, and a hang
when a second ``Command`` to the same BMC is built with ``str`` credentials.
A ``Command`` built against a dead address also blocks ~30 s in its
constructor.

How this module contains all of that:

* pyghmi runs only in **worker processes**, forked on demand from a small
  "zygote" process that has pyghmi preloaded (a new worker costs a few ms;
  multiprocessing's forkserver would re-import the controller's ``__main__``
  in every worker, ~1 s each). Each worker runs one call at a time, so the
  cross-thread bugs (lock order, shared blocking mode, sessions racing in one
  table) cannot happen in it.
* The parent bounds every call: it waits on the worker's pipe with the call's
  deadline; a worker that overruns is killed (SIGKILL) and replaced. A dead
  BMC, a 24 s login or any pyghmi hang therefore costs one worker, never the
  shared I/O thread of other calls.
* Inside a worker, two small patches are applied: receive with
  ``MSG_DONTWAIT`` and send without touching the socket's blocking mode (the
  I/O thread and the caller no longer flip the mode under each other), and
  ``_io_wait`` also wakes as soon as a packet for the waiting BMC is already
  queued (the "not drained before waiting" stall).
* Credentials are handed to pyghmi as ``bytes`` (``str`` hangs a second
  ``Command`` to the same BMC) and travel parent -> worker over a pipe, never
  on a command line or in the environment.
* A BMC is routed to the worker that served it last when that worker is free,
  so its RMCP+ session is reused; sessions idle longer than ``SESSION_IDLE``
  are dropped before use (BMCs expire idle sessions, IPMI 2.0 §6.12.15).
* pyghmi never sees ICMP errors (unconnected sockets) and reports "no answer"
  as an empty exception: beside each call the parent runs a session-less
  probe on a connected UDP socket (ipmi_probe.py), so a closed port or dead
  host ends the call at once as ``bmc_unreachable`` and only true silence is
  ``bmc_timeout``. Completion and RMCP+ status codes are named from the IPMI
  tables (ipmi_codes.py), which also build the messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from provisioner.drivers.power import ipmi_codes
from provisioner.drivers.power.base import (
    BmcSpec,
    BootDevice,
    BootSetting,
    PowerAction,
    PowerInterface,
    PowerState,
)
from provisioner.drivers.power.ipmi_codes import timeout_error, unreachable_error, worker_error
from provisioner.drivers.power.ipmi_probe import WireProbe, wait_for
from provisioner.errors import (
    BmcBusy,
    BmcError,
    InvalidInput,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 623  # RMCP, IPMI 2.0 §13.1
# IPMI privilege levels (IPMI 2.0 table 6-4)
PRIVILEGES = {"callback": 1, "user": 2, "operator": 3, "admin": 4, "administrator": 4}
# Cipher suites pyghmi can speak: 17 (SHA-256/AES) and 3 (SHA-1/AES). IPMI 2.0 table 22-20.
CIPHER_SUITES = (3, 17)
# A cached session is dropped after this many idle seconds; pyghmi's own keepalive
# interval is 29 s (MAX_IDLE) and BMCs commonly expire sessions after 60 s.
SESSION_IDLE = 20.0
# A call may wait this many call-bounds for a free worker before it is "busy".
QUEUE_FACTOR = 3.0
# A read over a cached session that gets no answer this fast is retried once over a
# fresh login (an RMCP+ reply on a LAN takes milliseconds; pyghmi's own first
# retransmit comes after 0.5-1 s). Writes never are: a chassis reset must not repeat.
STALE_SESSION_WAIT = 1.0
_READ_ONLY = {"get_power", "get_bootdev", "ping"}

_BOOTDEV_TO_PYGHMI = {
    BootDevice.PXE: "network",
    BootDevice.DISK: "hd",
    BootDevice.CDROM: "optical",
    BootDevice.BIOS: "setup",
    BootDevice.DEFAULT: "default",
}
_BOOTDEV_FROM_PYGHMI = {v: k for k, v in _BOOTDEV_TO_PYGHMI.items()}

# A call over a cached session that has not answered this fast gets the wire probe
# (ipmi_probe.py) too; a fresh login (several round trips anyway) gets it at once.
PROBE_AFTER = 0.25

# =============================================================================
# Worker side: runs in a child process; the only place pyghmi is imported.
# =============================================================================

_patched = False
_sessions: dict[tuple[str, int, bytes], tuple[Any, float]] = {}


def _patch_pyghmi() -> None:
    """Fix the pyghmi 1.6.19 client bugs that hurt even one caller at a time."""
    global _patched
    if _patched:
        return
    import socket

    from pyghmi.ipmi.private import session as psession

    def _io_sendto(mysocket: Any, packet: bytes, sockaddr: Any) -> None:
        # upstream calls setblocking(1) here while the I/O thread calls
        # setblocking(0) before recvfrom on the same socket: a recv can then block forever.
        if hasattr(mysocket, "fd"):
            mysocket = mysocket.fd
        with contextlib.suppress(OSError):
            mysocket.sendto(packet, sockaddr)

    def _io_recvfrom(mysocket: Any, size: int) -> Any:
        try:
            return mysocket.recvfrom(size, socket.MSG_DONTWAIT)
        except OSError:
            return None

    def _pending(myaddr: Any) -> bool:
        handlers = psession.Session.bmc_handlers.get(myaddr) if myaddr is not None else None
        if not handlers:
            return bool(psession.sessionqueue) if myaddr is None else False
        return any(getattr(s, "pktqueue", None) for s in list(handlers.values()))

    def _io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
        # upstream waits for the I/O thread to see a *new* packet from myaddr; a
        # reply the I/O thread already queued for this session before the waiter
        # registered is then only noticed at the retry timeout (~1 s). Checking the
        # queue *after* registering closes the race: the I/O thread routes a packet
        # (pktqueue) before it matches the registered waiters, so a packet is either
        # already visible here or will set our event.
        evt = threading.Event()
        if evq is not None:
            evq.append(evt)
        deadline = timeout + psession._monotonic_time()
        psession.ioqueue.append((deadline, evt, myaddr))
        if _pending(myaddr):
            return
        if deadline < psession.selectdeadline:
            with contextlib.suppress(OSError):
                intsock = psession.iosockets[0]
                intsock.sendto(b"\x01", (psession.myself, intsock.getsockname()[1]))
        evt.wait(max(0.0, deadline - psession._monotonic_time()))

    orig_init = psession.Session._initsession

    def _initsession(self: Any) -> None:
        orig_init(self)
        if getattr(psession, "_prov_cipher_suite", None) == 3:
            self.attemptedhash = 1  # propose suite 3 directly instead of 17 first

    psession._io_sendto = _io_sendto
    psession._io_recvfrom = _io_recvfrom
    psession._io_wait = _io_wait
    psession.Session._initsession = _initsession
    _patched = True


def _classify(exc: BaseException) -> tuple[str, str]:
    """pyghmi exception -> (kind, a reason without secrets); the parent makes the error of it.

    kind: auth | timeout (nothing answered: the parent asks the wire probe why) |
    unreachable | busy | unsupported | error.
    """
    from pyghmi import exceptions as pexc
    from pyghmi.ipmi.private import constants as pconst

    text = str(exc)
    text = "" if text in ("", "None") else text
    low = text.lower()
    code = getattr(exc, "ipmicode", 0) or 0
    if isinstance(exc, pexc.UnsupportedFunctionality | NotImplementedError):
        return "unsupported", text or exc.__class__.__name__
    # pyghmi ends a login or command that got no answer after its retransmits with an empty
    # message (session marked broken), "timeout" (code 0xffff) or "no longer connected".
    if (not text or low == "timeout" or "timed out" in low or code == 0xFFFF or "no longer connected" in low
            or "failed to initialize" in low):
        return "timeout", "no answer"
    # RMCP+ session set-up refused (Open Session / RAKP status, IPMI 2.0 table 13-15)
    for status, words in pconst.rmcp_codes.items():
        if text.startswith(words):
            return ipmi_codes.rmcp_kind(status), f"{text}, RMCP+ status {status:#04x}"
    if any(w in low for w in ("password", "unauthorized name", "invalid user name", "null user",
                              "privelege level", "user permissions", "rakp")):
        return "auth", text  # pyghmi's own RAKP checks; "privelege" is its spelling at login
    if not code:  # pyghmi dropped the number: its text comes from its copy of table 5-2 (longest match)
        known = [(len(words), c) for c, words in pconst.ipmi_completion_codes.items()
                 if 0 < c < 0x100 and low.startswith(words.lower())]
        unknown = re.match(r"unknown code 0x\s*([0-9a-f]+)", low)
        code = max(known)[1] if known else int(unknown.group(1), 16) if unknown else 0
    if 0 < code < 0x100:
        return ipmi_codes.completion_kind(code), ipmi_codes.describe_completion(code)
    if "unable to transmit" in low:
        return "unreachable", "cannot send to the address (name resolution or route)"
    if isinstance(exc, OSError):
        return "unreachable", exc.__class__.__name__
    return "error", text


def _command(req: dict[str, Any]) -> Any:
    from pyghmi.ipmi import command as pcommand
    from pyghmi.ipmi.private import session as psession

    key = (req["address"], req["port"], req["username"])
    now = time.monotonic()
    if req.get("fresh"):
        _drop(key)
    cached = _sessions.get(key)
    if cached is not None:
        cmd, used = cached
        sess = cmd.ipmi_session
        if now - used < SESSION_IDLE and not sess.broken and sess.logged and sess.password == req["password"]:
            _sessions[key] = (cmd, now)
            return cmd
        _drop(key)
    # pyghmi hands a new Command a half-initialised session left in initting_sessions
    # by an earlier failed login to the same BMC (it then waits on it): this worker
    # runs one call at a time, so any such entry is stale.
    for k in list(psession.Session.initting_sessions):
        if k[0] == req["address"] and k[3] == req["port"]:
            psession.Session.initting_sessions.pop(k, None)
    psession._prov_cipher_suite = req.get("cipher_suite")
    cmd = pcommand.Command(
        bmc=req["address"],
        userid=req["username"],
        password=req["password"],
        port=req["port"],
        privlevel=req.get("privilege"),
        keepalive=False,  # we drop idle sessions ourselves; no background traffic
    )
    _sessions[key] = (cmd, now)
    return cmd


def _drop(key: tuple[str, int, bytes]) -> None:
    cached = _sessions.pop(key, None)
    if cached is None:
        return
    sess = cached[0].ipmi_session
    # Forget the session without a logout round trip (which waits up to 1 s when
    # the BMC is gone); the BMC expires it on its own.
    with contextlib.suppress(Exception):
        sess.logged = 0
        sess.lastpayload = None
        sess.broken = True
        for sockaddr in list(getattr(sess, "allsockaddrs", ())):
            sess.bmc_handlers.pop(sockaddr, None)


def _run_op(req: dict[str, Any]) -> Any:
    op = req["op"]
    cmd = _command(req)
    if op == "ping":
        return True
    if op == "get_power":
        return cmd.get_power()["powerstate"]
    if op == "set_power":
        result = cmd.set_power(req["state"], wait=False)
        if isinstance(result, dict) and "error" in result:
            raise RuntimeError(str(result["error"]))
        return True
    if op == "set_bootdev":
        result = cmd.set_bootdev(req["device"], persist=req["persist"], uefiboot=req["uefi"])
        if isinstance(result, dict) and "error" in result:
            raise RuntimeError(str(result["error"]))
        return True
    if op == "get_bootdev":
        result = cmd.get_bootdev()
        return {"device": result.get("bootdev"), "persistent": bool(result.get("persistent")),
                "uefi": bool(result.get("uefimode"))}
    raise ValueError(f"unknown op {op!r}")


def _worker_main(conn: Connection) -> None:
    """Serve requests from the parent, one at a time, until the pipe closes."""
    _patch_pyghmi()
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        key = (req.get("address"), req.get("port"), req.get("username"))
        try:
            reply: tuple[str, Any] = ("ok", _run_op(req))
        except BaseException as exc:
            kind, text = _classify(exc)
            # Never echo anything that could contain the credentials (a password of a few
            # characters would only mangle the text: pyghmi's messages never quote it anyway).
            secret = req.get("password", b"").decode(errors="replace")
            if len(secret) >= 4:
                text = text.replace(secret, "********")
            _drop(key)  # type: ignore[arg-type]
            reply = (kind, text)
        finally:
            req = {}
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def _zygote_main(ctl_fd: int) -> None:
    """Preload pyghmi, then fork one worker per request on the control socket ``ctl_fd``.

    Protocol: the parent sends one byte plus one socket fd (SCM_RIGHTS); the zygote
    forks, the child serves that socket, and the zygote answers with the child's pid.
    """
    import ctypes
    import struct

    import pyghmi.ipmi.command  # noqa: F401 - preload: each fork starts with it imported

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    ctl = socket.socket(fileno=ctl_fd)
    libc = ctypes.CDLL(None, use_errno=True)
    while True:
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ctl, 1, 1)
        except OSError:
            return
        if not fds:  # parent closed the control socket: the controller is gone
            return
        pid = os.fork()
        if pid == 0:  # worker
            try:
                ctl.close()
                libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _worker_main(Connection(fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])
        ctl.sendall(struct.pack("<i", pid))


# =============================================================================
# Parent side: a pool of workers, one call in flight per worker.
# =============================================================================


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
             f"from provisioner.drivers.power.ipmi import _zygote_main; _zygote_main({child.fileno()})"],
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


# =============================================================================
# The driver
# =============================================================================


class IpmiPower(PowerInterface):
    """Power and boot device through IPMI 2.0 chassis commands (IPMI 2.0 §28)."""

    def validate(self) -> None:
        s = self.spec
        if not s.address:
            raise InvalidInput(field="bmc_address", reason="required for IPMI")
        if not s.username:
            raise InvalidInput(field="bmc_username", reason="required for IPMI")
        if s.password is None:
            raise InvalidInput(field="bmc_password", reason="required for IPMI")
        if s.port is not None and not 0 < s.port < 65536:
            raise InvalidInput(field="bmc_port", reason="must be 1-65535")
        priv = s.options.get("privilege")
        if priv is not None and str(priv).lower() not in PRIVILEGES:
            raise InvalidInput(field="bmc_options.privilege", reason=f"one of {', '.join(PRIVILEGES)}")
        suite = s.options.get("cipher_suite")
        if suite is not None and int(suite) not in CIPHER_SUITES:
            raise InvalidInput(field="bmc_options.cipher_suite", reason="pyghmi supports cipher suites 3 and 17")

    def _call(self, op: str, **args: Any) -> Any:
        opts = self.spec.options
        priv = opts.get("privilege")
        suite = opts.get("cipher_suite")
        req = {
            "op": op,
            "privilege": PRIVILEGES[str(priv).lower()] if priv is not None else None,
            "cipher_suite": int(suite) if suite is not None else None,
            **args,
        }
        return get_pool().call(self.spec, req, self.spec.timeout)

    def ping(self) -> None:
        """Log in (checks address and credentials) without changing anything."""
        self._call("ping")

    def get_power_state(self) -> PowerState:
        value = self._call("get_power")
        return {"on": PowerState.ON, "off": PowerState.OFF}.get(str(value), PowerState.UNKNOWN)

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        # IPMI chassis control (IPMI 2.0 §28.3): on=1, off=0, reset=3, soft=5.
        if action == PowerAction.SOFT_OFF:
            self._call("set_power", state="shutdown")
            return
        state = {
            PowerAction.ON: "on",
            PowerAction.OFF: "off",
            PowerAction.RESET: "reset",
            PowerAction.CYCLE: "boot",  # pyghmi: on if off, else reset
        }[action]
        self._call("set_power", state=state)

    def set_boot_device(self, setting: BootSetting) -> None:
        self._call(
            "set_bootdev",
            device=_BOOTDEV_TO_PYGHMI[setting.device],
            persist=setting.persistent,
            uefi=setting.uefi,
        )

    def get_boot_device(self) -> BootSetting | None:
        value = self._call("get_bootdev")
        dev = _BOOTDEV_FROM_PYGHMI.get(str(value.get("device")))
        if dev is None:
            return None
        return BootSetting(dev, persistent=bool(value.get("persistent")), uefi=bool(value.get("uefi")))
