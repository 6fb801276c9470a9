"""Several TFTP server workers on one port (SO_REUSEPORT, issue 14): real clients (curl) fetch
through them, and a server without the option still cannot share the port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner.drivers.boot.tftp import TftpConfig, TftpServer
from provisioner.errors import BootError
from tests.support.helpers import free_port


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_real_clients_through_two_workers(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(300_000)
    (root / "f.bin").write_bytes(data)
    port = free_port(socket.SOCK_DGRAM)
    workers = [TftpServer(TftpConfig(root=root, port=port, reuse_port=True, max_per_client=64)).start()
               for _ in range(2)]
    try:
        with pytest.raises(BootError):  # a plain server is still refused the shared port
            TftpServer(TftpConfig(root=root, port=port))

        def fetch(i: int) -> bytes:
            out = tmp_path / f"out{i}"
            subprocess.run(["curl", "-sS", "--tftp-blksize", "1468", "-o", str(out),
                            f"tftp://127.0.0.1:{port}/f.bin"], check=True, timeout=60)
            return out.read_bytes()

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(fetch, range(16)))
        assert all(g == data for g in got)
    finally:
        for w in workers:
            w.stop()
