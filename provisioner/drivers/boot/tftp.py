"""prov's TFTP server: tftpy's packet codec with a hardened, fast transfer engine.

Only the tftp_* modules import tftpy. tftpy 0.8.7's own server is not
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
on request (the conductor passes it in, see :func:`serve`). The hook reads a
database, so it is never called on the listener: the request gets its own
thread, which asks the hook through a few workers (tftp_hooks.py) and then
sends the answer; the listener goes on with the next request at once.

The parts: tftp_config.py (TftpConfig, TransferRecord, the dynamic hook and its
paths), tftp_hooks.py (the hook's workers and deadline), tftp_packets.py
(tftpy's codec, option negotiation), tftp_files.py (root confinement, shared
mappings), tftp_transfer.py (one transfer: hot path, retries, shedding) and
this module (the listener, admission, :func:`serve`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tftpy.TftpPacketTypes import TftpPacketWRQ
from tftpy.TftpShared import TftpErrors

from provisioner.drivers.boot.netascii import NetasciiFile, convert
from provisioner.drivers.boot.tftp_config import DynamicHook, TftpConfig, TftpNotFound, TransferRecord, match_dynamic
from provisioner.drivers.boot.tftp_files import MapCache, Payload, resolve_in_root, safe_relpath
from provisioner.drivers.boot.tftp_hooks import HookGate
from provisioner.drivers.boot.tftp_packets import DEFAULT_BLKSIZE, MAX_REQUEST, Refused, error_packet, parse_request
from provisioner.drivers.boot.tftp_transfer import Transfer, take_sheddable
from provisioner.errors import BootError
from provisioner.metrics import TFTP_ACTIVE, TFTP_TRANSFERS

if TYPE_CHECKING:
    from provisioner.settings import Settings

log = logging.getLogger("provisioner.tftp")

__all__ = ["DynamicHook", "TftpConfig", "TftpNotFound", "TftpServer", "TransferRecord", "match_dynamic", "serve"]


class TftpServer:
    """A read-only TFTP server; ``start()`` runs it in background threads, ``stop()`` ends it."""

    def __init__(self, cfg: TftpConfig) -> None:
        self.cfg = cfg
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transfers: set[Transfer] = set()
        self._maps = MapCache()
        self._thread: threading.Thread | None = None
        self._hooks = HookGate(cfg.dynamic, cfg.hook_workers, cfg.hook_deadline) if cfg.dynamic else None
        info = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_DGRAM)[0]
        self.family = info[0]
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        # no SO_REUSEADDR: for UDP it would let a second server bind the same port silently
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        if cfg.reuse_port:  # only between sockets that all ask for it: a plain server still blocks us
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
        if self._hooks is not None:
            self._hooks.shutdown()
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
        except Refused as exc:
            # Answer junk only if it claimed to be a request; otherwise stay silent.
            if datagram[:2] in (b"\x00\x01", b"\x00\x02"):
                self._reply_error(peer, exc.code, exc.message)
            log.warning("tftp: refused datagram from %s: %s", peer[0], exc.message)
            return
        filename = str(pkt.filename)
        kind = "WRQ" if isinstance(pkt, TftpPacketWRQ) else "RRQ"
        try:
            if isinstance(pkt, TftpPacketWRQ):
                raise Refused(TftpErrors.AccessViolation, "write requests are refused")
            mode = str(pkt.mode).lower()
            if mode not in ("octet", "netascii"):
                raise Refused(TftpErrors.IllegalTftpOp, f"mode {mode} not supported")
            rel = safe_relpath(filename)
            options = dict(pkt.options or {})
            netascii = mode == "netascii"
            if self._hooks is not None and self.cfg.dynamic_paths(rel):
                # The hook may wait on a database: the request's own thread asks it (tftp_hooks.py).
                if not self._hooks.admit(rel, peer):
                    return  # a resent copy of a request being looked up: that one answers
                try:
                    threading.Thread(target=self._serve_dynamic, args=(rel, filename, peer, options, netascii),
                                     name=f"tftp-xfer-{peer[0]}:{peer[1]}", daemon=True).start()
                except RuntimeError:
                    self._hooks.abandon(rel, peer)
                    raise Refused(TftpErrors.NotDefined, "busy, retry") from None
                return
            transfer = self._prepare(rel, peer, options, *self._open_file(rel, netascii=netascii))
        except Refused as exc:
            self._refused(kind, filename, peer, exc)
            return
        threading.Thread(target=transfer.run, name=f"tftp-xfer-{peer[0]}:{peer[1]}", daemon=True).start()

    def _serve_dynamic(self, rel: str, filename: str, peer: tuple[str, int], options: dict[str, str],
                       netascii: bool) -> None:
        """A request's thread for a hook path: the hook's answer (or the file under the root when
        it has none), then the transfer itself."""
        assert self._hooks is not None
        try:
            try:
                content = self._hooks.call(rel, peer)
            except TftpNotFound as exc:
                raise Refused(TftpErrors.FileNotFound, "file not found") from exc
            except Refused:
                raise
            except Exception as exc:
                log.exception("tftp: dynamic file %s failed", rel)
                raise Refused(TftpErrors.NotDefined, "could not render file") from exc
            if content is not None:
                opened: tuple[Payload, Callable[[], None]] = (convert(content) if netascii else content), _noop
            else:
                opened = self._open_file(rel, netascii=netascii)
            transfer = self._prepare(rel, peer, options, *opened)
        except Refused as exc:
            self._refused("RRQ", filename, peer, exc)
            return
        transfer.run()

    def _prepare(self, rel: str, peer: tuple[str, int], options: dict[str, str], payload: Payload,
                 closer: Callable[[], None]) -> Transfer:
        """The transfer for an opened file, holding its slot (or Refused, the file closed)."""
        transfer = Transfer(self, peer, rel, payload, options, closer)
        try:
            self._admit(transfer)
        except Refused:
            transfer.sock.close()
            closer()
            raise
        return transfer

    def _refused(self, kind: str, filename: str, peer: tuple[str, int], exc: Refused) -> None:
        log.warning("tftp refused %s %r from %s: %s", kind, filename, peer[0], exc.message,
                    extra={"tftp_client": peer[0], "tftp_file": filename, "tftp_ok": False})
        self._reply_error(peer, exc.code, exc.message)
        TFTP_TRANSFERS.labels("refused").inc()
        if self.cfg.on_transfer is not None:
            with contextlib.suppress(Exception):
                self.cfg.on_transfer(TransferRecord(f"{peer[0]}:{peer[1]}", filename, 0, 0.0,
                                                    DEFAULT_BLKSIZE, 1, False, exc.message))

    def _admit(self, transfer: Transfer) -> None:
        """Give ``transfer`` a slot, shedding one that is not worth its slot if none is free.

        Within the client's own ``max_per_client``, then within ``max_transfers``, the
        transfer shed is the oldest one never acknowledged (a silent RRQ, a spoofed
        source), else the oldest one whose client stopped answering; a transfer that
        is making progress is never shed. Nothing sheddable: ERROR, and the
        requests already running go on.
        """
        client = transfer.peer[0]
        shed: list[Transfer] = []
        with self._lock:
            mine = [t for t in self._transfers if t.peer[0] == client]
            if len(mine) >= self.cfg.max_per_client:
                shed.append(take_sheddable(mine, self._transfers, f"too many transfers from {client}"))
            if len(self._transfers) >= self.cfg.max_transfers:
                shed.append(take_sheddable(self._transfers, self._transfers, "server busy"))
            self._transfers.add(transfer)
        TFTP_ACTIVE.inc()  # until the transfer's thread ends (_transfer_done), shed or not
        for victim in shed:
            log.info("tftp: shedding %s -> %s:%d (%s) for a new request", victim.filename, victim.peer[0],
                     victim.peer[1], "never acknowledged" if not victim.confirmed else "client stopped answering")
            victim.cancel()

    def _transfer_done(self, transfer: Transfer) -> None:
        with self._lock:
            self._transfers.discard(transfer)
        TFTP_ACTIVE.dec()

    def _open_file(self, rel: str, netascii: bool = False) -> tuple[Payload, Callable[[], None]]:
        path = resolve_in_root(self.cfg.root, rel)
        try:
            # O_NOFOLLOW: the path was resolved above; a symlink swapped in since then is refused.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise Refused(TftpErrors.FileNotFound, "file not found") from exc
        except OSError as exc:
            raise Refused(TftpErrors.AccessViolation, "access denied") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(TftpErrors.FileNotFound, "file not found")
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
