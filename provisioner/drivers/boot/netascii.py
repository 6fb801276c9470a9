"""TFTP netascii (RFC 764 / RFC 1350): CR -> CR NUL, LF -> CR LF, converted as a stream.

A netascii transfer of a large file must not hold the converted file in
memory (a 100 MB file used to cost ~190 MB and stall the TFTP listener while
it was converted). :class:`NetasciiFile` is a read-only, sliceable view of the
converted file: one pass counts the line ends per chunk (so the size, which
the tsize option needs, is known without converting), then each block is cut
from a chunk converted on demand, the last two kept for retransmissions.
"""

from __future__ import annotations

import bisect
import os
import threading

CHUNK = 256 * 1024  # input bytes per converted chunk; >= the largest TFTP block, so a block spans <= 2 chunks


def convert(data: bytes) -> bytes:
    return data.replace(b"\r", b"\r\x00").replace(b"\n", b"\r\n")


class NetasciiFile:
    """The netascii form of an open file, sliced like ``bytes`` (``len()``, ``[a:b]``).

    Owns ``fd`` (closed by :meth:`close`). The size pass runs on the first
    ``len()``, in the transfer's own thread, not the listener's.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size_in = size
        self._starts: list[int] | None = None  # converted offset where each input chunk starts
        self._lock = threading.Lock()
        self._cache: dict[int, bytes] = {}

    def _read(self, index: int) -> bytes:
        return os.pread(self._fd, CHUNK, index * CHUNK)

    def _index(self) -> list[int]:
        if self._starts is None:
            starts = [0]
            for i in range((self._size_in + CHUNK - 1) // CHUNK):
                raw = self._read(i)
                starts.append(starts[-1] + len(raw) + raw.count(b"\r") + raw.count(b"\n"))
            self._starts = starts
        return self._starts

    def __len__(self) -> int:
        return self._index()[-1]

    def _chunk(self, index: int) -> bytes:
        with self._lock:
            data = self._cache.get(index)
            if data is None:
                data = convert(self._read(index))
                if len(self._cache) >= 2:  # forward-only, plus a window back for retransmissions
                    self._cache.pop(min(self._cache))
                self._cache[index] = data
            return data

    def __getitem__(self, item: slice) -> bytes:
        starts = self._index()
        total = starts[-1]
        start, stop, _ = item.indices(total)
        out = b""
        while start < stop:
            i = bisect.bisect_right(starts, start) - 1
            data = self._chunk(i)
            piece = data[start - starts[i]:stop - starts[i]]
            if not piece:
                break  # the file shrank under us: send what there is
            out += piece
            start += len(piece)
        return out

    def release(self) -> None:
        """Same call as ``memoryview.release`` (the sender releases whatever it sliced)."""

    def close(self) -> None:
        self._cache.clear()
        os.close(self._fd)
