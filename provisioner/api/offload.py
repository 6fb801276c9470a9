"""Run a blocking call that waits on the network (a BMC, libvirt, SSH) off the event loop.

A plain ``def`` route runs in the thread pool every sync route and dependency shares
(anyio's default: 40 threads). A route that waits on a dead BMC for its whole timeout
keeps one of those threads, so forty such requests stopped every other sync route,
``/healthz`` included (issue 18). Routes that wait on the network are therefore
``async def``, hold no database session of their own (the conductor opens short ones
around the I/O, never across it), and run the blocking part here: in threads counted
by a limiter of their own, so requests beyond it wait without holding any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar

T = TypeVar("T")

# One limiter per event loop (as anyio keeps its default one): a test process runs many.
_LIMITER: RunVar[CapacityLimiter] = RunVar("prov_network_io_limiter")
# Calls in flight at once; the power service caps BMC calls itself (settings.power_concurrency).
NETWORK_IO_THREADS = 64


def _limiter() -> CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = CapacityLimiter(NETWORK_IO_THREADS)
        _LIMITER.set(limiter)
        return limiter


async def run_network_io(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of the network-I/O pool; its exceptions propagate to the route."""
    return await anyio.to_thread.run_sync(fn, limiter=_limiter())
