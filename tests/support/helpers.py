"""Small helpers shared by every test area (import with ``from tests.support.helpers import ...``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"


def require_binary(*names: str) -> None:
    """Skip (or fail in CI, where PROV_REQUIRE_PEERS=1) when a peer program is missing."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        msg = f"required peer program(s) not installed: {', '.join(missing)}"
        if os.environ.get("PROV_REQUIRE_PEERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def require_root() -> None:
    if os.geteuid() != 0:
        msg = "needs root (network namespaces, libvirtd, sshd)"
        if os.environ.get("PROV_REQUIRE_PEERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def update_golden() -> bool:
    return os.environ.get("PROV_UPDATE_GOLDEN") == "1"


def assert_golden(relpath: str, actual: str) -> None:
    """Compare ``actual`` with tests/golden/<relpath>; PROV_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN_DIR / relpath
    if update_golden() or not path.exists():
        if not update_golden() and os.environ.get("PROV_REQUIRE_PEERS") == "1":
            pytest.fail(f"golden file {path} is missing (run with PROV_UPDATE_GOLDEN=1 once)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    expected = path.read_text()
    assert actual == expected, f"rendered output differs from {path} (PROV_UPDATE_GOLDEN=1 to accept)"


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """Terminate a peer process the test started; kill it if it does not exit within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@contextmanager
def banner_sshd() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that answers like sshd (its banner only), for wait-for-SSH steps."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 fake\r\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        srv.close()
