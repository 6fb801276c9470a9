"""What the wire says about an IPMI BMC that pyghmi cannot tell us: a session-less probe.

pyghmi sends from unconnected UDP sockets, so the ICMP errors a dead BMC
address produces (port or host unreachable) never reach it: a closed port and a
BMC that never answers both end as the same silent timeout. A *connected* UDP
socket does receive them (Linux reports a queued ICMP error as ECONNREFUSED,
EHOSTUNREACH... on the next recv), so ``WireProbe`` sends one session-less
"Get Channel Authentication Capabilities" request (IPMI 2.0 §22.13, what
ipmitool and pyghmi send first; every BMC answers it, before any login) on
such a socket and reads what comes back: an answer, an ICMP error, or nothing.
It carries no credentials and opens no session.

``wait_for`` waits for a worker's reply and for the probe's verdict at once, so a
closed port ends a call within milliseconds instead of at its deadline.
"""

from __future__ import annotations

import concurrent.futures
import errno
import socket
import time
from multiprocessing.connection import Connection, wait

# RMCP header (version 6, reserved, sequence 0xFF = no RMCP ACK, class 7 = IPMI; IPMI 2.0 §13.1.3),
# IPMI 1.5 session header with auth type none, session 0 (§13.6), then the request:
# rsAddr 0x20 (BMC), netFn 6 (App) / LUN 0, rqAddr 0x81, rqSeq 0, cmd 0x38, data:
# channel 0x8E (bit 7: report IPMI 2.0 data; 0xE: this channel), privilege 4 (admin).
_MSG = bytes([0x20, 0x06 << 2])
_MSG += bytes([-sum(_MSG) & 0xFF]) + bytes([0x81, 0x00, 0x38, 0x8E, 0x04])
_MSG += bytes([-sum(_MSG[3:]) & 0xFF])
PROBE_PACKET = bytes([0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, len(_MSG)]) + _MSG

# Resend the probe this often while nothing came back (UDP may drop it).
RESEND_EVERY = 1.0

# errno of a failed send/recv on the connected socket -> what happened on the wire
_UNREACHABLE = {
    errno.ECONNREFUSED: "port unreachable (ICMP)",
    errno.EHOSTUNREACH: "host unreachable (ICMP host unreachable or no ARP reply)",
    errno.ENETUNREACH: "no route to the BMC's network",
    errno.EHOSTDOWN: "host down",
    errno.EPERM: "blocked by the local firewall",
    errno.EACCES: "blocked by the local firewall",
}


# Host names are resolved here, off the caller's thread, so a slow resolver cannot hold a call
# past its deadline (numeric addresses, the usual case, resolve without a lookup).
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="prov-ipmi-dns")


class WireProbe:
    """One connected UDP socket to ``address:port``; ``unreachable`` says why, once the wire has told.

    The first probe goes out at ``start_at`` (monotonic; default: at once), is resent
    every ``RESEND_EVERY`` seconds while nothing came back, and stops at the verdict.
    """

    def __init__(self, address: str, port: int, *, start_at: float | None = None,
                 resolve_timeout: float = 1.0) -> None:
        self.answered = False
        self.unreachable: str | None = None
        self.sent = False
        self._due: float = time.monotonic() if start_at is None else start_at
        self._sock: socket.socket | None = None
        try:
            try:
                found = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
            except socket.gaierror:  # a host name: look it up, bounded
                lookup = _resolver.submit(socket.getaddrinfo, address, port, type=socket.SOCK_DGRAM)
                found = lookup.result(timeout=resolve_timeout)
            family, _type, _proto, _name, sockaddr = found[0]
        except concurrent.futures.TimeoutError:
            return  # no probe: the call itself still runs under its deadline
        except socket.gaierror:
            self.unreachable = f"cannot resolve {address!r}"
            return
        except OSError as exc:
            self._fail(exc)
            return
        try:
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._sock.connect(sockaddr)  # sends nothing: a route lookup (ENETUNREACH) only
        except OSError as exc:
            self._fail(exc)

    @property
    def done(self) -> bool:
        """The wire has answered one way or the other (nothing more to learn)."""
        return self.answered or self.unreachable is not None

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def due(self) -> float | None:
        """When the next (re)send is due (monotonic); None once there is nothing left to ask."""
        return None if self._sock is None or self.done else self._due

    def send(self) -> None:
        if self._sock is None or self.done:
            return
        self.sent = True
        self._due = time.monotonic() + RESEND_EVERY
        try:
            self._sock.send(PROBE_PACKET)
        except BlockingIOError:
            pass
        except OSError as exc:  # an ICMP error already queued, or no route
            self._fail(exc)

    def read(self) -> None:
        """Take what arrived: any datagram from the BMC is an answer, an ICMP error a verdict."""
        if self._sock is None or self.done:
            return
        try:
            if self._sock.recv(512):
                self.answered = True
                self.close()
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(exc)

    def settle(self, until: float) -> None:
        """Ask (again) and wait for a verdict until ``until``: for a call that failed before the probe had one."""
        while (due := self.due()) is not None:
            now = time.monotonic()
            if now >= due:
                self.send()
                continue
            if now >= until:
                return
            if wait([self], timeout=min(until, due) - now):  # type: ignore[list-item]  # wait() takes fileno()
                self.read()

    def _fail(self, exc: OSError) -> None:
        self.unreachable = _UNREACHABLE.get(exc.errno or 0, f"network error ({exc.__class__.__name__})")
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def wait_for(conn: Connection, until: float, probe: WireProbe | None) -> bool:
    """Wait until ``conn`` is readable (True), ``until`` passes or the probe finds the BMC
    unreachable (False both; the caller reads ``probe.unreachable``), running the probe meanwhile.
    """
    while True:
        now = time.monotonic()
        if probe is not None:
            due = probe.due()
            if due is not None and now >= due:
                probe.send()
            if probe.unreachable:
                return False
        if now >= until:
            return conn.poll(0)
        wake, waiting = until, [conn]
        due = probe.due() if probe is not None else None
        if probe is not None and due is not None:
            wake = min(wake, due)
            if probe.sent:
                waiting.append(probe)  # type: ignore[arg-type]  # wait() takes anything with fileno()
        ready = wait(waiting, timeout=max(0.0, wake - now))
        if conn in ready:
            return True
        if probe is not None and probe in ready:
            probe.read()
