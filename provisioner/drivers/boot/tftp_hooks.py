"""The dynamic hook, off the listener: a few workers, a deadline, "busy, retry" beyond them.

The per-MAC hook reads the controller's database. Called on the listener thread, one
slow answer (a pool wait of seconds) stalled every TFTP client behind it (issue 18).
Here the listener only takes a slot (:meth:`HookGate.admit`, never blocks); the
request's own thread asks the hook through :meth:`HookGate.call` and then becomes
its transfer. ``workers`` slots in all: a slot stays taken until its hook call
returns, even past the deadline, so a stuck database never piles up threads. A
client resending its request while the first is being looked up is not answered
twice: the copy is dropped.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from tftpy.TftpShared import TftpErrors

from provisioner.drivers.boot.tftp_config import DynamicHook
from provisioner.drivers.boot.tftp_packets import Refused

BUSY = "busy, retry"

_Key = tuple[tuple[str, int], str]


class HookGate:
    def __init__(self, hook: DynamicHook, workers: int, deadline: float) -> None:
        self.hook = hook
        self.deadline = deadline
        self._slots = threading.BoundedSemaphore(workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tftp-hook")
        self._lock = threading.Lock()
        self._pending: set[_Key] = set()

    def admit(self, rel: str, peer: tuple[str, int]) -> bool:
        """On the listener: False for a resent copy of a request being looked up (drop it);
        raises Refused "busy, retry" when every worker is taken."""
        key = (peer, rel)
        with self._lock:
            if key in self._pending:
                return False
            if not self._slots.acquire(blocking=False):
                raise Refused(TftpErrors.NotDefined, BUSY)
            self._pending.add(key)
        return True

    def call(self, rel: str, peer: tuple[str, int]) -> bytes | None:
        """On the request's thread, after :meth:`admit` returned True: the hook's answer, or
        Refused "busy, retry" after ``deadline`` seconds. Exceptions of the hook propagate."""
        try:
            future = self._pool.submit(self._run, rel, peer)
        except RuntimeError:  # shut down
            self._done(rel, peer, release=True)
            raise Refused(0, "server stopping") from None
        try:
            return future.result(timeout=self.deadline)
        except FutureTimeout:
            raise Refused(TftpErrors.NotDefined, BUSY) from None
        except CancelledError:  # the server stopped before the hook ran
            raise Refused(0, "server stopping") from None
        finally:
            with self._lock:
                self._pending.discard((peer, rel))

    def _run(self, rel: str, peer: tuple[str, int]) -> bytes | None:
        try:
            return self.hook(rel, peer)
        finally:
            self._slots.release()  # only now: a call past its deadline still holds its worker

    def _done(self, rel: str, peer: tuple[str, int], *, release: bool) -> None:
        with self._lock:
            self._pending.discard((peer, rel))
        if release:
            self._slots.release()

    def abandon(self, rel: str, peer: tuple[str, int]) -> None:
        """The request's thread could not be started: give its slot back."""
        self._done(rel, peer, release=True)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
