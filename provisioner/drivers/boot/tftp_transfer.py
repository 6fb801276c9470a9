"""One TFTP transfer: its own thread and socket, the per-block hot path, retries and shedding.

One thread per transfer with its own connected UDP socket (a new TID, RFC 1350
section 4), the file mapped once (``mmap``) and sent with ``sendmsg``
scatter/gather (4-byte header + a zero-copy slice), ACKs read with
``recv_into`` into a preallocated buffer, and ``SO_RCVTIMEO`` instead of
Python's poll-then-recv socket timeout, which halves the syscalls per block.

A transfer whose first packet was never acknowledged gives up after
``first_retries`` resends; when slots run short the server sheds the oldest
such transfer, then one whose client stopped answering (:func:`take_sheddable`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tftpy.TftpShared import TftpErrors

from provisioner.drivers.boot.netascii import NetasciiFile
from provisioner.drivers.boot.tftp_config import TransferRecord
from provisioner.drivers.boot.tftp_files import Payload
from provisioner.drivers.boot.tftp_packets import (
    DEFAULT_BLKSIZE,
    OP_ACK,
    OP_DATA,
    OP_ERROR,
    Refused,
    negotiate,
    oack_packet,
)
from provisioner.metrics import TFTP_BYTES, TFTP_TRANSFERS

if TYPE_CHECKING:
    from provisioner.drivers.boot.tftp import TftpServer

log = logging.getLogger("provisioner.tftp")

_ACK = struct.Struct("!HH")
_DATA_HDR = struct.Struct("!HH")

# Every DATA header and every expected ACK, built once: the hot loop only indexes.
_DATA_HEADERS = [_DATA_HDR.pack(OP_DATA, n) for n in range(65536)]
_ACK_PACKETS = [_ACK.pack(OP_ACK, n) for n in range(65536)]
_SHED = "shed: its slot went to a new request"
_SIZE_PROBE = "client ended the transfer after the OACK (size probe)"


class Transfer:
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
            raise Refused(0, "server stopping")
        if self.cancelled:
            raise Refused(0, _SHED)

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
        except Refused as exc:
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
        TFTP_TRANSFERS.labels("ok" if ok else "size_probe" if error == _SIZE_PROBE else "failed").inc()
        TFTP_BYTES.inc(sent)
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
                raise Refused(0, _SHED)
            return -1  # junk from our peer's port: ignore
        opcode, block = _ACK.unpack_from(buf)
        if opcode == OP_ACK:
            return int(block)
        if opcode == OP_ERROR:
            raise Refused(block, "client aborted the transfer")
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
                except Refused as exc:
                    if self.cancelled:
                        raise
                    # UEFI (EDK2) PXE asks once for tsize only and ends with ERROR after the OACK
                    raise Refused(exc.code, _SIZE_PROBE) from exc
                if got == 0:
                    self.confirmed = True
                    break
            else:
                raise Refused(0, "no ACK for OACK")
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
                            raise Refused(0, f"timed out after {retries} retries at block {acked + 1}")
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
                        raise Refused(0, f"timed out after {limit} retries at block {blk}")
                    self._abort_if_ended()
                    break
                if n < 4 and self.cancelled:  # shut down by cancel(): recv returns 0 at once
                    raise Refused(0, _SHED)
                if n >= 4 and buf[0] == 0 and buf[1] == OP_ERROR:
                    raise Refused(0, "client aborted the transfer")
                # anything else (a duplicate ACK, junk): wait on; never resend on a
                # duplicate ACK (Sorcerer's Apprentice syndrome, RFC 1123 4.2.3.1)
            if stop.is_set():
                raise Refused(0, "server stopping")
        return len(view)


def take_sheddable(candidates: Iterable[Transfer], transfers: set[Transfer], busy: str) -> Transfer:
    """Remove and return the transfer to shed among ``candidates`` (see TftpServer._admit)."""
    pool = list(candidates)
    victims = [t for t in pool if not t.confirmed] or [t for t in pool if t.stalled]
    if not victims:
        raise Refused(TftpErrors.NotDefined, busy)
    victim = min(victims, key=lambda t: t.started)
    transfers.discard(victim)
    return victim
