"""Several TFTP worker processes on one port (issue 14: boot agent TFTP at 64 clients).

``settings.tftp_workers`` > 1 (``prov serve --tftp-workers N``, all-in-one or ``--role boot``):
this process's TFTP server and N-1 worker processes each bind the TFTP port with SO_REUSEPORT
(TftpConfig.reuse_port); the kernel spreads the clients' first packets (RRQs) over the sockets by
address hash, and each transfer then runs on its own socket in the process that took it. One
Python process is GIL-bound at ~0.4x tftpd-hpa with 64 clients (bench/tftp.py); processes scale.

Each worker is a ``spawn`` child (no fork of a process that runs threads) with the same settings
and its own per-MAC hook (conductor/boot_service.tftp_hook: its own database connection and rate
limiter, per process as each TFTP server's caps). A worker dies with its parent
(PR_SET_PDEATHSIG, and it checks its parent every second): a SIGKILLed agent leaves no process
holding the port.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from provisioner.drivers.boot.tftp import DynamicHook, TftpServer
from provisioner.drivers.boot.tftp_config import TftpConfig
from provisioner.settings import Settings

log = logging.getLogger(__name__)


def _server(settings: Settings, hook: DynamicHook | None) -> TftpServer:
    root = settings.boot_dir
    root.mkdir(parents=True, exist_ok=True)
    cfg = TftpConfig(root=root, host=settings.tftp_host, port=settings.tftp_port, dynamic=hook,
                     max_per_client=settings.tftp_max_per_client, max_client_timeout=settings.tftp_max_timeout,
                     reuse_port=True)
    return TftpServer(cfg).start()


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker(settings: Settings, parent: int, ready: Any) -> None:
    _die_with_parent()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s tftp-worker: %(message)s")
    from provisioner.conductor.boot_service import tftp_hook
    from provisioner.drivers.boot.network import NetworkBoot

    server = _server(settings, tftp_hook(settings, NetworkBoot(settings)))
    ready.set()
    try:
        while os.getppid() == parent:
            time.sleep(1.0)
    finally:
        server.stop()


def start(settings: Settings, hook: DynamicHook | None) -> Callable[[], None]:
    """This process's TFTP server and ``tftp_workers - 1`` worker processes; the stop callable."""
    own = _server(settings, hook)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    for i in range(max(0, settings.tftp_workers - 1)):
        ready = ctx.Event()
        p = ctx.Process(target=_worker, args=(settings, os.getpid(), ready), name=f"prov-tftp-{i + 1}", daemon=True)
        p.start()
        if not ready.wait(30):
            log.error("TFTP worker %d did not start", i + 1)
        procs.append(p)
    log.info("TFTP on %s:%d: %d processes (SO_REUSEPORT)", settings.tftp_host, settings.tftp_port, 1 + len(procs))

    def stop() -> None:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        own.stop()

    return stop
