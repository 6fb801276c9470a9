"""The API's threads: the few route threads, and the network-I/O threads beside them.

Route threads. A plain ``def`` route (and a sync dependency, a FileResponse's reads, every
``run_in_threadpool``) runs in anyio's default thread pool, whose limiter allowed 40 threads.
Their work is Python holding the GIL (SQLite lets go of it only briefly), and the event loop
thread must take the GIL back after every callback and system call: each time it queued behind
the route threads that wanted it too. Under 200 clients (bench/abuse, 2 cores) ``/healthz``,
which needs no thread at all, answered in 160-190 ms at p99 (p50 50-90 ms), and a real TFTP
client's request waited seconds behind the listener thread, which queues the same way (issue
18). So ``limit_route_threads()`` (called once the app has started, on the loop that serves it:
api/middleware.GcTuningMiddleware) cuts that limiter to ``ROUTE_THREADS``; a request beyond it
waits on the event loop holding no thread. The API's throughput stays the same (the GIL allows
one core of Python however many threads queue for it): /healthz p99 under bench/abuse 163 -> 40-55 ms.

Network-I/O threads. A route that waits on the network (a dead BMC for its whole timeout, libvirt,
SSH) would keep a route thread, and a handful of such requests would stop every sync route. Such
routes are therefore ``async def``, hold no database session of their own (the conductor opens
short ones around the I/O, never across it), and run the blocking part in ``run_network_io``:
threads counted by a limiter of their own, which mostly sleep in the kernel and cost the GIL
nothing; requests beyond it wait holding no thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar

from provisioner import db

T = TypeVar("T")

# One limiter per event loop (as anyio keeps its default one): a test process runs many.
_LIMITER: RunVar[CapacityLimiter] = RunVar("prov_network_io_limiter")
# Calls in flight at once; the power service caps BMC calls itself (settings.power_concurrency).
NETWORK_IO_THREADS = 64
# Route threads (anyio's default limiter): two per core keeps a thread ready while another waits
# on SQLite, the disk or PostgreSQL, and leaves the event loop few rivals for the GIL. bench/abuse,
# /healthz under 200 clients, p50/p99 ms: 40 threads 52/163; with 4 (and logs/'s writer thread)
# 6-8/40-55 and as many API requests served. Compared under a profiler (which slows all of them):
# 40: 91/186, 8: 17/74, 4: 12/85, 2: 8/77 but 18 % fewer requests served. At most db.API_THREADS,
# which the connection pool is sized for.
ROUTE_THREADS = 4
assert ROUTE_THREADS <= db.API_THREADS


def limit_route_threads(threads: int = ROUTE_THREADS) -> None:
    """Cut the running event loop's default thread limiter (route threads) to ``threads``.

    Must run on the loop that serves requests (the ASGI lifespan start-up does)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = threads


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
