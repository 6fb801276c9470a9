"""Run a function in a child process that is killed at a deadline, with its memory capped.

For work on untrusted input that pure-Python bounds cannot make safe on their
own: an operator's template upload is render-checked here (templates_catalog).
A thread would not do: a CPU-bound render holds the GIL and starves the API's
event loop, and a thread cannot be killed. Children come from a *forkserver*
(a clean process started once, that has imported what the checks need): a
fork of it costs milliseconds and, unlike a fork of the API process, inherits
none of its threads, sockets or locks. At most ``MAX_CHILDREN`` run at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from provisioner.errors import ProvError

T = TypeVar("T")

MAX_CHILDREN = 2
# What the children need, imported once in the forkserver (an ImportError there is ignored).
PRELOAD = ["provisioner.templates_catalog", "pykickstart.parser", "pykickstart.version"]

_ctx = multiprocessing.get_context("forkserver")
_slots = threading.BoundedSemaphore(MAX_CHILDREN)
_preload_set = False


class IsolatedFailure(Exception):
    """The child did not answer: it ran past the deadline (and was killed), or it died."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def _limit_memory(extra_bytes: int) -> None:
    """Cap the child's address space at what it has now plus ``extra_bytes``."""
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * resource.getpagesize()
    cap = size + extra_bytes
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _child(conn: Connection, func: Callable[..., Any], args: tuple[Any, ...], memory: int) -> None:
    try:
        _limit_memory(memory)
        try:
            result: tuple[str, Any] = ("ok", func(*args))
        except ProvError as exc:  # the expected refusals travel back whole (details included)
            result = ("raise", exc)
        except MemoryError:
            result = ("memory", None)
        except Exception as exc:
            result = ("crash", f"{type(exc).__name__}: {exc}")
        conn.send(result)
    finally:
        conn.close()


def call(func: Callable[..., T], *args: Any, timeout: float, memory: int = 512 * 1024 * 1024,
         wait: float = 30.0) -> T:
    """``func(*args)`` in a child; its ProvError is re-raised here, anything else is IsolatedFailure.

    ``func`` and the arguments must be picklable (``func`` a module-level function).
    """
    global _preload_set
    if not _preload_set:  # before the forkserver starts (on the first call), not at import
        _ctx.set_forkserver_preload(PRELOAD)
        _preload_set = True
    if not _slots.acquire(timeout=wait):
        raise IsolatedFailure(f"{MAX_CHILDREN} checks already running for more than {wait:g} s")
    try:
        return _run(func, args, timeout, memory)
    finally:
        _slots.release()


def _run(func: Callable[..., T], args: tuple[Any, ...], timeout: float, memory: int) -> T:
    receiver, sender = _ctx.Pipe(duplex=False)
    proc = _ctx.Process(target=_child, args=(sender, func, args, memory), daemon=True,
                        name="prov-isolated")
    try:
        proc.start()
        sender.close()  # ours: EOF on the receiver now means the child is gone
        if not receiver.poll(timeout):
            raise IsolatedFailure(f"took longer than {timeout:g} s", timed_out=True)
        try:
            kind, value = receiver.recv()
        except (EOFError, OSError) as exc:
            raise IsolatedFailure("the check process died (memory or CPU limit)") from exc
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        receiver.close()
        with contextlib.suppress(Exception):
            sender.close()
        with contextlib.suppress(ValueError):
            proc.close()
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if kind == "raise":
        raise value
    if kind == "memory":
        raise IsolatedFailure("needs more than the memory allowed")
    raise IsolatedFailure(f"failed: {value}")
