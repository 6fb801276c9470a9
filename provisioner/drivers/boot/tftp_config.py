"""What a TFTP server is given (TftpConfig, the per-MAC dynamic hook and the paths it answers) and
what it reports (TransferRecord)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.drivers.boot.tftp_packets import MAX_BLKSIZE

DynamicHook = Callable[[str, tuple[str, int]], bytes | None]


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


def is_dynamic(rel: str) -> bool:
    """The default ``TftpConfig.dynamic_paths``: the per-MAC config paths."""
    return match_dynamic(rel) is not None


class TftpNotFound(Exception):
    """Raised by a dynamic hook: "this path is mine and there is nothing to serve"."""


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
    # The paths the hook is asked about; every other path is a file under ``root``.
    dynamic_paths: Callable[[str], bool] = is_dynamic
    # The hook may read a database that is slow: it runs on these workers, never on the listener
    # (tftp_hooks.py). A request finding them all busy, or waiting longer than hook_deadline
    # seconds for its answer, is told "busy, retry" (PXE clients resend their request).
    hook_workers: int = 4
    hook_deadline: float = 3.0
    on_transfer: Callable[[TransferRecord], None] | None = None
    # SO_REUSEPORT on the listening port: several server processes share it, the kernel spreading
    # requests over them by a hash of the client's address and port (issue 14: TFTP at 64 clients).
    # Each process keeps its own caps, so a client address may hold max_per_client in each.
    reuse_port: bool = False
    extra: dict[str, str] = field(default_factory=dict)
