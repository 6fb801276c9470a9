"""One background job that runs a function every N seconds (timeout checker, drift check)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def start_periodic(name: str, interval: float, fn: Callable[[], object], *,
                   join_timeout: float = 10.0) -> Callable[[], None]:
    """Run ``fn`` every ``interval`` seconds on a daemon thread (nothing when ``interval`` <= 0).

    Returns the stop callable. An exception in one pass is logged and the job
    goes on: one bad pass (a database restart) must not end it.
    """
    stop_event = threading.Event()
    if interval <= 0:
        return stop_event.set

    def loop() -> None:
        while not stop_event.wait(interval):
            try:
                fn()
            except Exception:
                log.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=f"prov-{name}", daemon=True)
    thread.start()

    def stop() -> None:
        stop_event.set()
        thread.join(timeout=join_timeout)

    return stop
