"""prov's TFTP server against real clients: tftp-hpa's tftp, atftp and curl.

tftp-hpa's client exits 0 on errors and leaves an empty file, so every check
compares content. Runs on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner.drivers.boot import tftp as T
from tests.support.helpers import free_port, require_binary

pytestmark = pytest.mark.integration

MAC = "52:54:00:12:34:56"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "undionly.kpxe").write_bytes(os.urandom(300_000))
    (r / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    (tmp_path / "secret").write_text("top secret\n")
    (r / "escape").symlink_to(tmp_path / "secret")
    return r


@pytest.fixture
def server(root: Path):
    records: list[T.TransferRecord] = []

    def hook(rel: str, _peer: tuple[str, int]) -> bytes | None:
        found = T.match_dynamic(rel)
        if found is None:
            return None
        kind, mac = found
        if mac != MAC:
            raise T.TftpNotFound(rel)
        return f"# {kind} for {mac}\n".encode()

    # max_per_client: test_64_parallel's 64 "machines" all come from 127.0.0.1
    srv = T.TftpServer(T.TftpConfig(root=root, host="127.0.0.1", port=free_port(socket.SOCK_DGRAM),
                                    dynamic=hook, on_transfer=records.append, max_per_client=64)).start()
    srv.records = records  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def run(*cmd: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- downloads -------------------------------------------------------------------
def test_tftp_hpa_get(server, root, tmp_path):
    require_binary("tftp")
    out = tmp_path / "o.bin"
    run("tftp", "-m", "binary", "127.0.0.1", str(server.port), "-c", "get", "undionly.kpxe", str(out))
    assert digest(out) == digest(root / "undionly.kpxe")
    # netascii (tftp-hpa's default mode) of a text file round-trips
    (root / "t.txt").write_text("a\nb\n")
    out2 = tmp_path / "t.txt"
    run("tftp", "127.0.0.1", str(server.port), "-c", "get", "t.txt", str(out2))
    assert out2.read_text() == "a\nb\n"


def test_per_mac_files_all_clients(server, tmp_path):
    require_binary("tftp", "atftp", "curl")
    dash = MAC.replace(":", "-")
    for name, kind in ((f"pxelinux.cfg/01-{dash}", "pxelinux"), (f"grub.cfg-01-{dash}", "grub"),
                       (f"grub/grub.cfg-01-{dash}", "grub")):
        want = f"# {kind} for {MAC}\n"
        o1, o2, o3 = tmp_path / "1", tmp_path / "2", tmp_path / "3"
        run("tftp", "-m", "binary", "127.0.0.1", str(server.port), "-c", "get", name, str(o1))
        run("atftp", "-g", "-r", name, "-l", str(o2), "127.0.0.1", str(server.port))
        run("curl", "-sS", "-o", str(o3), f"tftp://127.0.0.1:{server.port}/{name}")
        assert o1.read_text() == want and o2.read_text() == want and o3.read_text() == want
    # an unknown MAC gets nothing
    o4 = tmp_path / "4"
    r = run("curl", "-sS", "-o", str(o4), f"tftp://127.0.0.1:{server.port}/pxelinux.cfg/01-52-54-00-99-99-99")
    assert r.returncode != 0 and (not o4.exists() or o4.read_bytes() == b"")


def test_atftp_option_negotiation(server, root, tmp_path):
    require_binary("atftp")
    out = tmp_path / "o"
    r = run("atftp", "--trace", "-g", "-r", "big.bin", "-l", str(out), "--option", "blksize 1468",
            "--option", "tsize", "--option", "timeout 3", "--option", "windowsize 8", "127.0.0.1", str(server.port))
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-2000:]
    assert digest(out) == digest(root / "big.bin")
    oack = next(line for line in text.splitlines() if line.startswith("received OACK"))
    for frag in ("blksize: 1468", f"tsize: {4 * 1024 * 1024}", "timeout: 3", "windowsize: 8"):
        assert frag in oack, oack
    rec = [x for x in server.records if x.filename == "big.bin"][-1]
    assert (rec.blksize, rec.windowsize, rec.bytes_sent, rec.ok) == (1468, 8, 4 * 1024 * 1024, True)


def test_curl_blksize(server, root, tmp_path):
    require_binary("curl")
    for blk in ("512", "1468", "8192"):
        out = tmp_path / f"o{blk}"
        r = run("curl", "-sS", "--tftp-blksize", blk, "-o", str(out), f"tftp://127.0.0.1:{server.port}/big.bin")
        assert r.returncode == 0, r.stderr
        assert digest(out) == digest(root / "big.bin")
    assert {x.blksize for x in server.records if x.filename == "big.bin"} >= {1468, 8192}


def test_64_parallel(server, root, tmp_path):
    require_binary("curl", "atftp")
    want = digest(root / "big.bin")

    def one(i: int) -> str:
        out = tmp_path / f"p{i}"
        if i % 2:
            r = run("curl", "-sS", "--tftp-blksize", "1468", "-o", str(out), f"tftp://127.0.0.1:{server.port}/big.bin",
                    timeout=120)
        else:
            r = run("atftp", "-g", "-r", "big.bin", "-l", str(out), "--option", "blksize 1468", "127.0.0.1",
                    str(server.port), timeout=120)
        assert r.returncode == 0, r.stderr
        return digest(out)

    t0 = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        digests = list(pool.map(one, range(64)))
    assert digests == [want] * 64
    assert time.monotonic() - t0 < 120
    assert sum(1 for x in server.records if x.filename == "big.bin" and x.ok) >= 64


# --- refusals ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../secret", "escape", "/etc/hostname", "a/../../secret"])
def test_traversal_refused_all_clients(server, tmp_path, name):
    require_binary("tftp", "atftp", "curl")
    o1, o2, o3 = tmp_path / "1", tmp_path / "2", tmp_path / "3"
    run("tftp", "-m", "binary", "127.0.0.1", str(server.port), "-c", "get", name, str(o1))
    r2 = run("atftp", "-g", "-r", name, "-l", str(o2), "127.0.0.1", str(server.port))
    r3 = run("curl", "-sS", "--path-as-is", "-o", str(o3), f"tftp://127.0.0.1:{server.port}/{name}")
    for o in (o1, o2, o3):
        assert not o.exists() or o.read_bytes() == b""
    assert r2.returncode != 0 and r3.returncode != 0
    assert any(not x.ok and x.filename == name for x in server.records)


def test_write_refused_all_clients(server, root, tmp_path):
    require_binary("tftp", "atftp", "curl")
    src = tmp_path / "upload.bin"
    src.write_bytes(b"evil" * 100)
    r1 = run("tftp", "-m", "binary", "127.0.0.1", str(server.port), "-c", "put", str(src), "undionly.kpxe")
    r2 = run("atftp", "-p", "-l", str(src), "-r", "new1.bin", "127.0.0.1", str(server.port))
    r3 = run("curl", "-sS", "-T", str(src), f"tftp://127.0.0.1:{server.port}/new2.bin")
    assert "refused" in (r1.stdout + r1.stderr) or "Error" in (r1.stdout + r1.stderr)
    assert r2.returncode != 0 and r3.returncode != 0
    assert not (root / "new1.bin").exists() and not (root / "new2.bin").exists()
    assert (root / "undionly.kpxe").read_bytes() != src.read_bytes()
