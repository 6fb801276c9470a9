"""The worker side of the IPMI driver: runs in a child process, the only place pyghmi is imported.

A small "zygote" process preloads pyghmi and forks one worker per request of
the parent (ipmi_pool.py); each worker serves one call at a time over its
socket. Inside a worker, pyghmi 1.6.19's I/O is patched (no blocking-mode
flips on shared sockets, no missed wake-up for a reply already queued),
RMCP+ sessions are cached per BMC and dropped when idle, and pyghmi's
exceptions are classified into a kind and a reason without secrets, from
which the parent makes the error (ipmi_codes.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from provisioner.drivers.power import ipmi_codes

# A cached session is dropped after this many idle seconds; pyghmi's own keepalive
# interval is 29 s (MAX_IDLE) and BMCs commonly expire sessions after 60 s.
SESSION_IDLE = 20.0

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
