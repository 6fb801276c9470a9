"""The dynamic hook runs off the listener (issue 18): a slow per-MAC lookup (a database waiting on
its pool) delays nobody else; over the hook's capacity a request hears "busy, retry"."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from provisioner.drivers.boot import tftp as T
from tests.unit.drivers.boot.test_tftp_server import fetch

SLOW_MAC = "52:54:00:00:00:99"
FAST_MAC = "52:54:00:00:00:01"


def _cfg_name(mac: str) -> str:
    return "pxelinux.cfg/01-" + mac.replace(":", "-")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "undionly.kpxe").write_bytes(bytes(range(256)) * 200)
    return tmp_path


def _server(root: Path, delay: float, **cfg: float) -> tuple[T.TftpServer, threading.Event]:
    release = threading.Event()

    def hook(rel: str, _peer: tuple[str, int]) -> bytes | None:
        found = T.match_dynamic(rel)
        if found is None:
            return None
        if found[1] == SLOW_MAC:
            release.wait(delay)  # a database that takes its time
        return f"{found[0]} config for {found[1]}\n".encode()

    srv = T.TftpServer(T.TftpConfig(root=root, port=0, timeout=0.5, dynamic=hook, **cfg))  # type: ignore[arg-type]
    return srv.start(), release


def test_slow_hook_does_not_delay_static_or_other_macs(root: Path) -> None:
    srv, release = _server(root, 3.0, hook_deadline=5.0)
    try:
        slow: dict[str, object] = {}

        def fetch_slow() -> None:
            t0 = time.monotonic()
            slow["data"] = fetch(srv.port, _cfg_name(SLOW_MAC), sock_timeout=6.0)[0]
            slow["took"] = time.monotonic() - t0

        worker = threading.Thread(target=fetch_slow)
        worker.start()
        time.sleep(0.2)  # the slow lookup is under way
        t0 = time.monotonic()
        data, _ = fetch(srv.port, "undionly.kpxe")
        static_took = time.monotonic() - t0
        assert data == (root / "undionly.kpxe").read_bytes()
        assert static_took < 0.3, f"a static fetch waited {static_took:.2f} s behind a slow hook"
        t0 = time.monotonic()
        data, _ = fetch(srv.port, _cfg_name(FAST_MAC))
        assert data == f"pxelinux config for {FAST_MAC}\n".encode()
        assert time.monotonic() - t0 < 0.3
        worker.join(8)
        assert slow["data"] == f"pxelinux config for {SLOW_MAC}\n".encode()  # answered once the hook was
        assert 2.5 < float(slow["took"]) < 5.0  # type: ignore[arg-type]
    finally:
        release.set()
        srv.stop()


def test_over_capacity_and_past_deadline_is_busy_retry(root: Path) -> None:
    srv, release = _server(root, 10.0, hook_workers=1, hook_deadline=0.5)
    try:
        results: list[BaseException | bytes] = []

        def fetch_slow() -> None:
            try:
                results.append(fetch(srv.port, _cfg_name(SLOW_MAC), sock_timeout=3.0)[0])
            except BaseException as exc:  # the test inspects it
                results.append(exc)

        worker = threading.Thread(target=fetch_slow)
        worker.start()
        time.sleep(0.2)
        # the only hook worker is taken: this request is turned away at once, the listener goes on
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as busy:
            fetch(srv.port, _cfg_name(FAST_MAC))
        assert busy.value.args[1] == "busy, retry"
        assert time.monotonic() - t0 < 0.3
        data, _ = fetch(srv.port, "undionly.kpxe")  # static files need no hook worker
        assert data == (root / "undionly.kpxe").read_bytes()
        worker.join(5)
        # the slow one gave up waiting after hook_deadline: told to retry, not left hanging
        assert isinstance(results[0], RuntimeError) and results[0].args[1] == "busy, retry"
    finally:
        release.set()
        srv.stop()
