"""prov's TFTP server: tftpy's packet codec with a hardened, fast transfer engine.

This is the only module that imports tftpy. tftpy 0.8.7's own server is not
safe to expose (it accepts uploads, follows symlinks out of its root, and a
malformed datagram can raise out of its select loop and stop the server) and
it is ~2x slower than tftpd-hpa because every DATA/ACK goes through its
context/state objects and dozens of ``log.debug`` calls. So:

* tftpy parses every *request* (RRQ/WRQ) and encodes every OACK and ERROR
  packet; the request path is not hot.
* The per-block hot path is our own: one thread per transfer with its own
  connected UDP socket (a new TID, RFC 1350 section 4), the file mapped once
  (``mmap``) and sent with ``sendmsg`` scatter/gather (4-byte header + a
  zero-copy slice), ACKs read with ``recv_into`` into a preallocated buffer,
  and ``SO_RCVTIMEO`` instead of Python's poll-then-recv socket timeout, which
  halves the syscalls per block.

Supported: RFC 1350 (octet and netascii), RFC 2347 option negotiation,
RFC 2348 blksize, RFC 2349 tsize and timeout, RFC 7440 windowsize. Refused:
write requests, ``..``, absolute paths, backslashes, symlinks that leave the
root, anything that is not a regular file. Every transfer is logged with
client, file, bytes, duration.

Nobody on the provisioning network may lock PXE out (issue 18): a client
cannot negotiate a retransmission timeout above ``max_client_timeout``; one
client address holds at most ``max_per_client`` transfers; a transfer whose
first packet was never acknowledged gives up after ``first_retries`` resends,
and when the slots run short (per address or in all) a new request takes the
slot of the oldest such unanswered transfer, then of one whose client stopped
answering, before anyone is told "busy". Netascii is converted as a stream
(netascii.py), never the whole file at once.

Per-MAC boot configs (``pxelinux.cfg/01-<mac>``, ``grub.cfg-01-<mac>``,
``grub/grub.cfg-01-<mac>``) never exist on disk: a *dynamic hook* renders them
on request (the conductor passes it in, see :func:`serve`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketERR, TftpPacketOACK, TftpPacketRRQ, TftpPacketWRQ
from tftpy.TftpShared import TftpErrors

from provisioner.drivers.boot.netascii import NetasciiFile, convert
from provisioner.errors import BootError

if TYPE_CHECKING:
    from provisioner.settings import Settings

log = logging.getLogger("provisioner.tftp")

# --- protocol constants ---------------------------------------------------------
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE = 512  # RFC 1350
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348 section 2 (65464 = 65535 - IP/UDP/TFTP headers)
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349 section 2 (seconds)
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535  # RFC 7440 section 3
MAX_REQUEST = 1024  # an RRQ with options fits easily; larger first datagrams are junk
_ACK = struct.Struct("!HH")
_DATA_HDR = struct.Struct("!HH")

# Every DATA header and every expected ACK, built once: the hot loop only indexes.
_DATA_HEADERS = [_DATA_HDR.pack(OP_DATA, n) for n in range(65536)]
_ACK_PACKETS = [_ACK.pack(OP_ACK, n) for n in range(65536)]

DynamicHook = Callable[[str, tuple[str, int]], bytes | None]


class TftpNotFound(Exception):
    """Raised by a dynamic hook: "this path is mine and there is nothing to serve"."""


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TransferRecord:
    """One finished (or failed) transfer; logged and handed to ``on_transfer``."""

    client: str
    filename: str
    bytes_sent: int
    duration: float
    blksize: int
    windowsize: int
    ok: bool
    error: str = ""


@dataclass
class TftpConfig:
    root: Path
    host: str = "127.0.0.1"
    port: int = 69
    timeout: float = 1.0  # seconds before a block is resent, unless the client asks (RFC 2349)
    retries: int = 6  # resends of the same window before giving up
    # resends of the first packet (OACK or DATA 1) that nobody acknowledged: a silent RRQ is cheap
    first_retries: int = 2
    max_transfers: int = 512  # concurrent transfers; beyond: ERROR "server busy" (after shedding)
    max_per_client: int = 8  # concurrent transfers from one client address (after shedding)
    max_client_timeout: int = 5  # the largest ``timeout`` option we acknowledge (RFC 2349 allows 255)
    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64  # a bound on how much we blast before an ACK
    socket_buffer: int = 4 * 1024 * 1024  # SO_SNDBUF/SO_RCVBUF for transfer sockets
    dynamic: DynamicHook | None = None
    on_transfer: Callable[[TransferRecord], None] | None = None
    extra: dict[str, str] = field(default_factory=dict)


# --- request parsing / path safety ----------------------------------------------
_factory = TftpPacketFactory()


def error_packet(code: int, message: str) -> bytes:
    """An ERROR datagram (tftpy's encoder; it only knows fixed texts, so give it ours)."""
    pkt = TftpPacketERR()
    pkt.errorcode = code
    pkt.errmsgs = {code: message.encode("ascii", "replace")[:200]}
    return bytes(pkt.encode().buffer)


def oack_packet(options: dict[str, str]) -> bytes:
    pkt = TftpPacketOACK()
    pkt.options = options
    return bytes(pkt.encode().buffer)


def parse_request(datagram: bytes) -> TftpPacketRRQ | TftpPacketWRQ:
    """Decode a first datagram with tftpy; anything else is refused with a TFTP error code."""
    if len(datagram) < 4 or len(datagram) > MAX_REQUEST:
        raise _Refused(TftpErrors.IllegalTftpOp, "malformed request")
    opcode = int.from_bytes(datagram[:2], "big")
    if opcode not in (OP_RRQ, OP_WRQ):
        raise _Refused(TftpErrors.IllegalTftpOp, "expected a read request")
    try:
        pkt = _factory.parse(datagram)
    except Exception as exc:  # tftpy raises TftpException, struct.error, UnicodeDecodeError...
        raise _Refused(TftpErrors.IllegalTftpOp, "malformed request") from exc
    assert isinstance(pkt, TftpPacketRRQ | TftpPacketWRQ)
    return pkt


def safe_relpath(filename: str) -> str:
    """Normalise a requested name to a relative path inside the root, or refuse it."""
    if not filename or "\x00" in filename or "\\" in filename:
        raise _Refused(TftpErrors.AccessViolation, "invalid file name")
    if filename.startswith("/"):
        raise _Refused(TftpErrors.AccessViolation, "absolute paths are refused")
    parts = [p for p in filename.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise _Refused(TftpErrors.AccessViolation, "path outside the root is refused")
    return "/".join(parts)


def resolve_in_root(root: Path, rel: str) -> Path:
    """The real path of ``rel`` under ``root``; refuses symlinks that lead outside it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise _Refused(TftpErrors.AccessViolation, "path outside the root is refused")
    return Path(real)


def negotiate(options: dict[str, str], size: int, cfg: TftpConfig) -> tuple[dict[str, str], int, float, int]:
    """RFC 2347: answer only the options we understand; returns (oack, blksize, timeout, window)."""
    oack: dict[str, str] = {}
    blksize, timeout, window = DEFAULT_BLKSIZE, cfg.timeout, 1
    for raw_key, raw_val in options.items():
        key = raw_key.lower()  # option names are case-insensitive (RFC 2347)
        try:
            val = int(raw_val)
        except ValueError:
            continue  # an option we cannot read is simply not acknowledged
        if key == "blksize" and val >= MIN_BLKSIZE:
            blksize = min(val, cfg.max_blksize)
            oack["blksize"] = str(blksize)
        elif key == "tsize" and val == 0:  # on a read request the client sends 0 (RFC 2349)
            oack["tsize"] = str(size)
        elif key == "timeout" and MIN_TIMEOUT <= val <= min(MAX_TIMEOUT, cfg.max_client_timeout):
            # RFC 2349: the OACK must carry the client's own value, so a longer timeout is not
            # lowered but declined (left out of the OACK, RFC 2347): we keep our cfg.timeout.
            timeout = float(val)
            oack["timeout"] = str(val)
        elif key == "windowsize" and val >= MIN_WINDOWSIZE:
            window = min(val, cfg.max_windowsize, MAX_WINDOWSIZE)
            oack["windowsize"] = str(window)
    return oack, blksize, timeout, window


Payload = bytes | mmap.mmap | NetasciiFile
_SHED = "shed: its slot went to a new request"


# --- the transfer engine --------------------------------------------------------
class _Transfer:
    """Sends one file to one client. Runs in its own thread, owns its socket."""

    def __init__(self, server: TftpServer, peer: tuple[str, int], filename: str, payload: Payload,
                 options: dict[str, str], closer: Callable[[], None]) -> None:
        self.server = server
        self.peer = peer
        self.filename = filename
        self.payload = payload
        self.options = options
        # negotiated in the transfer's thread (a netascii size pass must not stall the listener)
        self.oack: dict[str, str] = {}
        self.blksize = DEFAULT_BLKSIZE
        self.timeout = server.cfg.timeout
        self.window = 1
        self.closer = closer
        self.sock = socket.socket(server.family, socket.SOCK_DGRAM)
        # What the server sheds first when slots run short (see TftpServer._admit).
        self.started = time.monotonic()
        self.confirmed = False  # the client acknowledged something: it is really there
        self.stalled = False  # resending: the client missed at least the last ACK
        self.cancelled = False

    def _abort_if_ended(self) -> None:
        if self.server._stopping.is_set():
            raise _Refused(0, "server stopping")
        if self.cancelled:
            raise _Refused(0, _SHED)

    def cancel(self) -> None:
        """Shed this transfer: wakes its thread (blocked in recv) and makes it give up."""
        self.cancelled = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once (0 bytes)

    def run(self) -> None:
        start = time.monotonic()
        sent = 0
        error = ""
        ok = False
        try:
            sent = self._send()
            ok = True
        except _Refused as exc:
            error = exc.message
        except OSError as exc:  # peer gone (ICMP port unreachable), socket closed at stop
            error = f"socket error: {exc.strerror or exc}"
        except Exception as exc:  # never let one transfer take anything else down
            log.exception("tftp transfer of %s to %s crashed", self.filename, self.peer[0])
            error = f"internal error: {exc}"
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            with contextlib.suppress(Exception):
                self.closer()
            self.server._transfer_done(self)
        duration = time.monotonic() - start
        rec = TransferRecord(client=f"{self.peer[0]}:{self.peer[1]}", filename=self.filename, bytes_sent=sent,
                             duration=duration, blksize=self.blksize, windowsize=self.window, ok=ok, error=error)
        rate = sent / duration / 1e6 if duration > 0 else 0.0
        log.info("tftp %s %s -> %s: %d bytes in %.3f s (%.1f MB/s, blksize %d, windowsize %d)%s",
                 "sent" if ok else "FAILED", self.filename, rec.client, sent, duration, rate,
                 self.blksize, self.window, f": {error}" if error else "",
                 extra={"tftp_client": rec.client, "tftp_file": self.filename, "tftp_bytes": sent,
                        "tftp_duration": round(duration, 4), "tftp_ok": ok})
        if self.server.cfg.on_transfer is not None:
            with contextlib.suppress(Exception):
                self.server.cfg.on_transfer(rec)

    def _setup_socket(self) -> None:
        s = self.sock
        cfg = self.server.cfg
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.socket_buffer)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.bind((self.server.bound_host, 0))
        # connect(): the kernel drops datagrams from any other TID for us (RFC 1350 section 4).
        s.connect(self.peer)
        self._set_timeout(self.timeout)

    def _set_timeout(self, seconds: float) -> None:
        sec = int(seconds)
        usec = int((seconds - sec) * 1e6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))

    def _recv_ack(self, buf: bytearray) -> int | None:
        """Wire block number of the next ACK, None on timeout; raises on ERROR from the client."""
        try:
            n = self.sock.recv_into(buf)
        except (BlockingIOError, TimeoutError):
            return None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return None
            raise
        if n < 4:
            if self.cancelled:
                raise _Refused(0, _SHED)
            return -1  # junk from our peer's port: ignore
        opcode, block = _ACK.unpack_from(buf)
        if opcode == OP_ACK:
            return int(block)
        if opcode == OP_ERROR:
            raise _Refused(block, "client aborted the transfer")
        return -1

    def _send(self) -> int:
        cfg = self.server.cfg
        size = len(self.payload)
        self.oack, self.blksize, self.timeout, self.window = negotiate(self.options, size, cfg)
        self._setup_socket()
        blksize = self.blksize
        retries = cfg.retries
        sock = self.sock
        buf = bytearray(516)
        # RFC 2347: after an OACK the client answers with ACK 0 (or ERROR 8 to decline).
        if self.oack:
            oack = oack_packet(self.oack)
            for _attempt in range(cfg.first_retries + 1):
                self._abort_if_ended()
                sock.send(oack)
                try:
                    got = self._recv_ack(buf)
                except _Refused as exc:
                    if self.cancelled:
                        raise
                    # UEFI (EDK2) PXE asks once for tsize only and ends with ERROR after the OACK
                    raise _Refused(exc.code, "client ended the transfer after the OACK (size probe)") from exc
                if got == 0:
                    self.confirmed = True
                    break
            else:
                raise _Refused(0, "no ACK for OACK")
        view = self.payload if isinstance(self.payload, NetasciiFile) else memoryview(self.payload)
        total = size // blksize + 1  # the last block is short (possibly empty) and ends the transfer
        window = self.window
        if window == 1:
            try:
                return self._send_lockstep(view, total, buf)
            finally:
                view.release()
        pack = _DATA_HDR.pack
        sendmsg = sock.sendmsg
        acked = 0  # highest block (absolute, 1-based) the client confirmed
        tries = 0
        try:
            while acked < total:
                self._abort_if_ended()
                last = min(acked + window, total)
                blk = acked + 1
                off = acked * blksize
                while blk <= last:
                    # block numbers roll over to 0 after 65535, like tftpd-hpa and the clients we test
                    sendmsg((pack(OP_DATA, blk & 0xFFFF), view[off:off + blksize]))
                    blk += 1
                    off += blksize
                while True:
                    got = self._recv_ack(buf)
                    if got is None:  # timeout: resend the window from the first unacknowledged block
                        tries += 1
                        self.stalled = True
                        if tries > retries:
                            raise _Refused(0, f"timed out after {retries} retries at block {acked + 1}")
                        break
                    if got < 0:
                        continue
                    # map the 16-bit wire number onto the window [acked, last]
                    delta = (got - acked) & 0xFFFF
                    if delta == 0:
                        if window > 1:
                            break  # RFC 7440: an ACK of an older block asks for the window again
                        continue  # duplicate ACK: never resend on it (Sorcerer's Apprentice, RFC 1123)
                    if acked + delta > last:
                        continue  # stale ACK from long ago
                    acked += delta
                    tries = 0
                    self.stalled = False
                    break
        finally:
            view.release()
        return size

    def _send_lockstep(self, view: memoryview | NetasciiFile, total: int, buf: bytearray) -> int:
        """RFC 1350 lock-step: the hot path for clients without windowsize.

        Kept flat on purpose (profiled): local names only, precomputed headers,
        the expected ACK compared as 4 raw bytes, no per-block allocation but
        the memoryview slice.
        """
        blksize = self.blksize
        sendmsg = self.sock.sendmsg
        recv_into = self.sock.recv_into
        stop = self.server._stopping
        retries = self.server.cfg.retries
        # DATA 1 without an OACK before it: nobody has answered yet, give up sooner
        first_retries = retries if self.confirmed else self.server.cfg.first_retries
        headers = _DATA_HEADERS
        acks = _ACK_PACKETS
        blk = 1
        off = 0
        tries = 0
        while blk <= total:
            wire = blk & 0xFFFF  # block numbers roll over to 0 after 65535, like tftpd-hpa
            sendmsg((headers[wire], view[off:off + blksize]))
            want = acks[wire]
            while True:
                try:
                    n = recv_into(buf)
                except (BlockingIOError, TimeoutError, InterruptedError):
                    n = -1
                if n == 4 and buf[:4] == want:
                    if blk == 1:
                        self.confirmed = True
                    blk += 1
                    off += blksize
                    if tries:
                        tries = 0
                        self.stalled = False
                    break
                if n < 0:  # timeout: resend this block
                    tries += 1
                    self.stalled = True
                    limit = first_retries if blk == 1 else retries
                    if tries > limit:
                        raise _Refused(0, f"timed out after {limit} retries at block {blk}")
                    self._abort_if_ended()
                    break
                if n < 4 and self.cancelled:  # shut down by cancel(): recv returns 0 at once
                    raise _Refused(0, _SHED)
                if n >= 4 and buf[0] == 0 and buf[1] == OP_ERROR:
                    raise _Refused(0, "client aborted the transfer")
                # anything else (a duplicate ACK, junk): wait on; never resend on a
                # duplicate ACK (Sorcerer's Apprentice syndrome, RFC 1123 4.2.3.1)
            if stop.is_set():
                raise _Refused(0, "server stopping")
        return len(view)


class TftpServer:
    """A read-only TFTP server; ``start()`` runs it in background threads, ``stop()`` ends it."""

    def __init__(self, cfg: TftpConfig) -> None:
        self.cfg = cfg
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transfers: set[_Transfer] = set()
        self._maps = _MapCache()
        self._thread: threading.Thread | None = None
        info = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_DGRAM)[0]
        self.family = info[0]
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        # no SO_REUSEADDR: for UDP it would let a second server bind the same port silently
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        try:
            self.sock.bind(info[4])
        except OSError as exc:
            self.sock.close()
            raise BootError(reason=f"TFTP cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from exc
        self.sock.settimeout(0.25)  # only so stop() is noticed; the listener is not a hot path
        self.bound_host = self.sock.getsockname()[0]
        self.port = int(self.sock.getsockname()[1])

    # -- lifecycle
    def start(self) -> TftpServer:
        self._thread = threading.Thread(target=self._listen, name=f"tftp-{self.port}", daemon=True)
        self._thread.start()
        log.info("tftp serving %s on %s:%d", self.cfg.root, self.bound_host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            running = list(self._transfers)
        for transfer in running:  # wake the ones waiting for an ACK instead of waiting out their timeout
            transfer.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self.sock.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._transfers:
                    break
            time.sleep(0.02)
        log.info("tftp on port %d stopped", self.port)

    def __enter__(self) -> TftpServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def active_transfers(self) -> int:
        with self._lock:
            return len(self._transfers)

    # -- listener
    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                datagram, peer = self.sock.recvfrom(MAX_REQUEST + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. ICMP errors surfacing on the socket
            try:
                self._handle_request(datagram, peer[:2])
            except Exception:  # a bad datagram must never stop the listener
                log.exception("tftp: unexpected error handling a request from %s", peer[0])

    def _reply_error(self, peer: tuple[str, int], code: int, message: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(error_packet(code, message), peer)

    def _handle_request(self, datagram: bytes, peer: tuple[str, int]) -> None:
        try:
            pkt = parse_request(datagram)
        except _Refused as exc:
            # Answer junk only if it claimed to be a request; otherwise stay silent.
            if datagram[:2] in (b"\x00\x01", b"\x00\x02"):
                self._reply_error(peer, exc.code, exc.message)
            log.warning("tftp: refused datagram from %s: %s", peer[0], exc.message)
            return
        filename = str(pkt.filename)
        try:
            if isinstance(pkt, TftpPacketWRQ):
                raise _Refused(TftpErrors.AccessViolation, "write requests are refused")
            mode = str(pkt.mode).lower()
            if mode not in ("octet", "netascii"):
                raise _Refused(TftpErrors.IllegalTftpOp, f"mode {mode} not supported")
            rel = safe_relpath(filename)
            payload, closer = self._open(rel, peer, netascii=mode == "netascii")
            transfer = _Transfer(self, peer, rel, payload, dict(pkt.options or {}), closer)
            try:
                self._admit(transfer)
            except _Refused:
                transfer.sock.close()
                closer()
                raise
        except _Refused as exc:
            log.warning("tftp refused %s %r from %s: %s", "WRQ" if isinstance(pkt, TftpPacketWRQ) else "RRQ",
                        filename, peer[0], exc.message,
                        extra={"tftp_client": peer[0], "tftp_file": filename, "tftp_ok": False})
            self._reply_error(peer, exc.code, exc.message)
            if self.cfg.on_transfer is not None:
                with contextlib.suppress(Exception):
                    self.cfg.on_transfer(TransferRecord(f"{peer[0]}:{peer[1]}", filename, 0, 0.0,
                                                        DEFAULT_BLKSIZE, 1, False, exc.message))
            return
        threading.Thread(target=transfer.run, name=f"tftp-xfer-{peer[0]}:{peer[1]}", daemon=True).start()

    def _admit(self, transfer: _Transfer) -> None:
        """Give ``transfer`` a slot, shedding one that is not worth its slot if none is free.

        Within the client's own ``max_per_client``, then within ``max_transfers``, the
        transfer shed is the oldest one never acknowledged (a silent RRQ, a spoofed
        source), else the oldest one whose client stopped answering; a transfer that
        is making progress is never shed. Nothing sheddable: ERROR, and the
        requests already running go on.
        """
        client = transfer.peer[0]
        shed: list[_Transfer] = []
        with self._lock:
            mine = [t for t in self._transfers if t.peer[0] == client]
            if len(mine) >= self.cfg.max_per_client:
                shed.append(_take_sheddable(mine, self._transfers, f"too many transfers from {client}"))
            if len(self._transfers) >= self.cfg.max_transfers:
                shed.append(_take_sheddable(self._transfers, self._transfers, "server busy"))
            self._transfers.add(transfer)
        for victim in shed:
            log.info("tftp: shedding %s -> %s:%d (%s) for a new request", victim.filename, victim.peer[0],
                     victim.peer[1], "never acknowledged" if not victim.confirmed else "client stopped answering")
            victim.cancel()

    def _transfer_done(self, transfer: _Transfer) -> None:
        with self._lock:
            self._transfers.discard(transfer)

    def _open(self, rel: str, peer: tuple[str, int], netascii: bool = False) -> tuple[Payload, Callable[[], None]]:
        if self.cfg.dynamic is not None:
            try:
                content = self.cfg.dynamic(rel, peer)
            except TftpNotFound as exc:
                raise _Refused(TftpErrors.FileNotFound, "file not found") from exc
            except Exception as exc:
                log.exception("tftp: dynamic file %s failed", rel)
                raise _Refused(TftpErrors.NotDefined, "could not render file") from exc
            if content is not None:
                return (convert(content) if netascii else content), _noop
        path = resolve_in_root(self.cfg.root, rel)
        try:
            # O_NOFOLLOW: the path was resolved above; a symlink swapped in since then is refused.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise _Refused(TftpErrors.FileNotFound, "file not found") from exc
        except OSError as exc:
            raise _Refused(TftpErrors.AccessViolation, "access denied") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(TftpErrors.FileNotFound, "file not found")
            if st.st_size == 0:
                return b"", _noop
            if netascii:  # converted as it is sent, from its own descriptor (never whole in memory)
                stream = NetasciiFile(os.dup(fd), st.st_size)
                return stream, stream.close
            return self._maps.acquire(fd, st)
        finally:
            os.close(fd)


def _noop() -> None:
    return None


def _take_sheddable(candidates: Iterable[_Transfer], transfers: set[_Transfer], busy: str) -> _Transfer:
    """Remove and return the transfer to shed among ``candidates`` (see TftpServer._admit)."""
    pool = list(candidates)
    victims = [t for t in pool if not t.confirmed] or [t for t in pool if t.stalled]
    if not victims:
        raise _Refused(TftpErrors.NotDefined, busy)
    victim = min(victims, key=lambda t: t.started)
    transfers.discard(victim)
    return victim


class _MapCache:
    """Shares one read-only mapping of a file among concurrent transfers (64 PXE clients
    fetching the same iPXE binary map it once). Keyed by inode and mtime, so a replaced
    file gets a new mapping while running transfers keep the old one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: dict[tuple[int, int, int, int], list[object]] = {}

    def acquire(self, fd: int, st: os.stat_result) -> tuple[mmap.mmap, Callable[[], None]]:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            entry = self._maps.get(key)
            if entry is None:
                # MAP_POPULATE: fault the (page-cached) file in once instead of a fault per 4 KiB in the hot loop
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                entry = self._maps[key] = [mmap.mmap(fd, st.st_size, flags=flags, prot=mmap.PROT_READ), 0]
            entry[1] = int(entry[1]) + 1  # type: ignore[call-overload]
            mapped = entry[0]
        assert isinstance(mapped, mmap.mmap)

        def release() -> None:
            with self._lock:
                entry[1] = int(entry[1]) - 1  # type: ignore[call-overload]
                if entry[1] == 0:
                    self._maps.pop(key, None)
                    with contextlib.suppress(BufferError):
                        mapped.close()

        return mapped, release


# --- per-MAC configs rendered on request ----------------------------------------
_MAC = r"(?P<mac>[0-9a-f]{2}(?:-[0-9a-f]{2}){5})"
_DYNAMIC_PATHS = (
    # pxelinux asks for pxelinux.cfg/01-<mac> (01 = ARP type Ethernet) before falling back
    (re.compile(rf"^pxelinux\.cfg/01-{_MAC}$"), "pxelinux"),
    # GRUB's net_bootp/net default config search: grub.cfg-01-<mac>, also under its prefix dir
    (re.compile(rf"^(?:grub/)?grub\.cfg-01-{_MAC}$"), "grub"),
)


def match_dynamic(rel: str) -> tuple[str, str] | None:
    """``(kind, mac)`` when ``rel`` is a per-MAC config path, else None."""
    lowered = rel.lower()
    for pattern, kind in _DYNAMIC_PATHS:
        m = pattern.fullmatch(lowered)
        if m:
            return kind, m.group("mac").replace("-", ":")
    return None


def serve(settings: Settings, dynamic: DynamicHook | None = None) -> TftpServer:
    """Start the TFTP server that ``prov serve`` runs beside the API.

    ``dynamic`` answers the per-MAC config paths (:func:`match_dynamic`); the
    conductor passes it in (conductor/boot_service.py), since only it knows
    which host a MAC is and what it may boot.
    """
    root = settings.boot_dir
    root.mkdir(parents=True, exist_ok=True)
    cfg = TftpConfig(root=root, host=settings.tftp_host, port=settings.tftp_port, dynamic=dynamic,
                     max_per_client=settings.tftp_max_per_client, max_client_timeout=settings.tftp_max_timeout)
    return TftpServer(cfg).start()
