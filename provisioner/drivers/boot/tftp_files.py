"""What a TFTP request may read: names confined to the root, and files mapped once for all transfers.

Refused: ``..``, absolute paths, backslashes, NULs and symlinks that leave the
root (the server also opens with ``O_NOFOLLOW`` and serves regular files only).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

from tftpy.TftpShared import TftpErrors

from provisioner.drivers.boot.netascii import NetasciiFile
from provisioner.drivers.boot.tftp_packets import Refused

# What a transfer sends: a dynamic file's bytes, a shared mapping, or netascii converted as it goes.
Payload = bytes | mmap.mmap | NetasciiFile


def safe_relpath(filename: str) -> str:
    """Normalise a requested name to a relative path inside the root, or refuse it."""
    if not filename or "\x00" in filename or "\\" in filename:
        raise Refused(TftpErrors.AccessViolation, "invalid file name")
    if filename.startswith("/"):
        raise Refused(TftpErrors.AccessViolation, "absolute paths are refused")
    parts = [p for p in filename.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise Refused(TftpErrors.AccessViolation, "path outside the root is refused")
    return "/".join(parts)


def resolve_in_root(root: Path, rel: str) -> Path:
    """The real path of ``rel`` under ``root``; refuses symlinks that lead outside it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise Refused(TftpErrors.AccessViolation, "path outside the root is refused")
    return Path(real)

class MapCache:
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
