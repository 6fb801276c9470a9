"""Nobody on the provisioning network locks PXE out (issue 18 item 3), against the real server on
loopback with raw UDP sockets: silent floods, long negotiated timeouts, greedy clients, netascii."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.drivers.boot import tftp as T
from provisioner.drivers.boot.netascii import CHUNK, NetasciiFile, convert
from provisioner.drivers.boot.tftp_packets import negotiate
from tests.unit.drivers.boot.test_tftp_server import ACK, DATA, ERROR, OACK, fetch, rrq

SMALL = 70_000


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "undionly.kpxe").write_bytes(os.urandom(SMALL))
    (r / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    return r


@contextlib.contextmanager
def serving(root: Path, **cfg: object) -> Iterator[T.TftpServer]:
    srv = T.TftpServer(T.TftpConfig(root=root, port=0, **cfg))  # type: ignore[arg-type]
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def silent(port: int, name: str, source: str = "127.0.0.1", **opts: int | str) -> socket.socket:
    """An RRQ from ``source`` that is never answered (the socket stays open: no ICMP comes back)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.sendto(rrq(name, **opts), ("127.0.0.1", port))
    return s


def wait_until(cond, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def recv(s: socket.socket, timeout: float = 3.0) -> tuple[bytes, tuple[str, int]]:
    s.settimeout(timeout)
    return s.recvfrom(70000)


def test_a_silent_flood_does_not_lock_out_a_real_client(root):
    """600 unanswered RRQs from many ports of 127.0.0.1 and from 75 other 127.0.0.x addresses
    (more than all 512 slots): curl and tftp-hpa still fetch, from 127.0.0.1 itself too."""
    curl, tftp = shutil.which("curl"), shutil.which("tftp")
    if not curl or not tftp:
        pytest.skip("curl and tftp-hpa's tftp are needed (deploy/install.sh --dev)")
    want = hashlib.sha256((root / "undionly.kpxe").read_bytes()).hexdigest()
    with serving(root) as srv:  # the defaults prov serve runs with
        flood = [silent(srv.port, "undionly.kpxe") for _ in range(200)]
        flood += [silent(srv.port, "undionly.kpxe", f"127.0.0.{2 + i // 8}", timeout=255, tsize=0)
                  for i in range(400)]
        try:
            time.sleep(0.3)  # let the listener take them all
            assert srv.active_transfers <= srv.cfg.max_transfers
            out = root.parent / "curl.out"
            start = time.monotonic()
            r = subprocess.run([curl, "-sS", "--max-time", "20", "-o", str(out),
                                f"tftp://127.0.0.1:{srv.port}/undionly.kpxe"], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert hashlib.sha256(out.read_bytes()).hexdigest() == want
            out2 = root.parent / "hpa.out"
            subprocess.run([tftp, "-m", "binary", "127.0.0.1", str(srv.port), "-c", "get", "undionly.kpxe",
                            str(out2)], capture_output=True, timeout=30)
            assert out2.exists() and hashlib.sha256(out2.read_bytes()).hexdigest() == want
            assert time.monotonic() - start < 20
            # and every unanswered one lets go of its slot within a few timeouts
            assert wait_until(lambda: srv.active_transfers == 0, 3 * srv.cfg.timeout * (srv.cfg.first_retries + 2))
        finally:
            for s in flood:
                s.close()


def test_an_unanswered_request_holds_its_slot_only_briefly(root):
    with serving(root, timeout=0.3, retries=6) as srv:
        s = silent(srv.port, "undionly.kpxe")
        try:
            assert wait_until(lambda: srv.active_transfers == 1, 1)
            start = time.monotonic()
            assert wait_until(lambda: srv.active_transfers == 0, 5)
            # first_retries (2) resends, not retries (6): about 0.9 s, not 2.1 s
            assert time.monotonic() - start < 1.5
        finally:
            s.close()


def test_a_long_timeout_is_not_acknowledged(root):
    """RFC 2349: the OACK carries the client's own value, so above our maximum the option is
    declined (left out) and our own retransmission timeout stays in force."""
    with serving(root, timeout=0.5) as srv:
        _, oack = fetch(srv.port, "undionly.kpxe", timeout=5, tsize=0)
        assert oack == {"timeout": "5", "tsize": str(SMALL)}
        s = silent(srv.port, "undionly.kpxe", timeout=255, tsize=0)
        try:
            first, _ = recv(s)
            assert struct.unpack("!H", first[:2])[0] == OACK and b"timeout" not in first
            start = time.monotonic()
            again, _ = recv(s, timeout=3)  # resent after our 0.5 s, not the 255 s asked for
            assert again == first and time.monotonic() - start < 1.5
        finally:
            s.close()


def _held_transfer(port: int) -> socket.socket:
    """A transfer that is really running: DATA 1 and 2 acknowledged, then the client pauses."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(rrq("big.bin"), ("127.0.0.1", port))
    for block in (1, 2):
        pkt, peer = recv(s)
        assert struct.unpack("!HH", pkt[:4]) == (DATA, block)
        s.sendto(struct.pack("!HH", ACK, block), peer)
    return s


def test_one_address_gets_an_error_beyond_its_cap_and_others_are_served(root):
    with serving(root, timeout=2.0, max_per_client=8) as srv:
        held = [_held_transfer(srv.port) for _ in range(8)]
        try:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.sendto(rrq("undionly.kpxe"), ("127.0.0.1", srv.port))
            pkt, _ = recv(probe)
            probe.close()
            assert struct.unpack("!H", pkt[:2])[0] == ERROR
            assert b"too many transfers from 127.0.0.1" in pkt
            assert srv.active_transfers == 8  # the running ones go on
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.bind(("127.0.0.2", 0))
            other.sendto(rrq("undionly.kpxe"), ("127.0.0.1", srv.port))
            pkt, _ = recv(other)
            other.close()
            assert struct.unpack("!HH", pkt[:4]) == (DATA, 1)
            # once they stop answering they are shed for a new request of the same address
            time.sleep(2.3)
            assert fetch(srv.port, "undionly.kpxe")[0] == (root / "undionly.kpxe").read_bytes()
        finally:
            for s in held:
                s.close()


def test_a_full_server_sheds_unanswered_transfers_for_new_requests(root):
    with serving(root, timeout=5.0, max_transfers=16, max_per_client=16) as srv:
        flood = [silent(srv.port, "undionly.kpxe", f"127.0.1.{i}") for i in range(1, 41)]
        try:
            assert wait_until(lambda: srv.active_transfers == 16, 2)
            start = time.monotonic()
            assert fetch(srv.port, "undionly.kpxe")[0] == (root / "undionly.kpxe").read_bytes()
            assert time.monotonic() - start < 2  # not after the flood's 5 s timeouts
            assert srv.active_transfers <= 16
        finally:
            for s in flood:
                s.close()


# --------------------------------------------------------------------------- netascii
def test_netascii_file_matches_whole_file_conversion(tmp_path):
    rnd = random.Random(7)
    data = bytes(rnd.choices(b"ab\r\n", k=3 * CHUNK + 123))
    p = tmp_path / "t.txt"
    p.write_bytes(data)
    want = convert(data)
    view = NetasciiFile(os.open(p, os.O_RDONLY), len(data))
    try:
        assert len(view) == len(want)
        for _ in range(300):
            a = rnd.randrange(0, len(want))
            b = a + rnd.choice([1, 8, 512, 1468, 65464, 2 * CHUNK])
            assert view[a:b] == want[a:b]
        assert view[CHUNK - 3:CHUNK + 3] == want[CHUNK - 3:CHUNK + 3]
        assert view[len(want) - 5:len(want) + 100] == want[-5:]
    finally:
        view.close()


def _rss_anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def test_netascii_of_a_large_file_streams(root):
    """64 MiB of short lines: memory stays flat and a concurrent fetch is not held up."""
    big = root / "lines.txt"
    line = b"0123456789abcdef\n"
    big.write_bytes(line * (64 * 1024 * 1024 // len(line)))
    expected_size = big.stat().st_size + big.stat().st_size // len(line)  # one CR per LF
    with serving(root, timeout=2.0) as srv:
        fetch(srv.port, "undionly.kpxe")  # threads, buffers and caches warmed up
        base = _rss_anon()
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_anon())
                time.sleep(0.005)

        def netascii_client() -> tuple[int, str]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(rrq("lines.txt", mode=b"netascii", blksize=65464), ("127.0.0.1", srv.port))
            got, h, expected = 0, hashlib.sha256(), 1
            while True:
                pkt, peer = s.recvfrom(70000)
                op = struct.unpack("!H", pkt[:2])[0]
                if op == OACK:
                    s.sendto(struct.pack("!HH", ACK, 0), peer)
                    continue
                assert op == DATA, pkt[:80]
                block = struct.unpack("!H", pkt[2:4])[0]
                if block == expected & 0xFFFF:
                    got += len(pkt) - 4
                    h.update(pkt[4:])
                    expected += 1
                s.sendto(struct.pack("!HH", ACK, block), peer)
                if len(pkt) - 4 < 65464:
                    s.close()
                    return got, h.hexdigest()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result: list[tuple[int, str]] = []
        client = threading.Thread(target=lambda: result.append(netascii_client()), daemon=True)
        client.start()
        time.sleep(0.05)
        start = time.monotonic()
        assert fetch(srv.port, "undionly.kpxe")[0] == (root / "undionly.kpxe").read_bytes()
        concurrent = time.monotonic() - start
        client.join(60)
        done.set()
        sampler.join(5)
        assert result, "the netascii transfer did not finish"
        assert result[0][0] == expected_size
        h = hashlib.sha256()
        lines = 64 * 1024 * 1024 // len(line)
        for _ in range(lines // 4096):
            h.update(b"0123456789abcdef\r\n" * 4096)
        h.update(b"0123456789abcdef\r\n" * (lines % 4096))
        assert result[0][1] == h.hexdigest()
        assert peak[0] - base < 16 * 1024 * 1024, f"RSS grew by {(peak[0] - base) >> 20} MiB"
        assert concurrent < 0.5, concurrent


def test_prov_serve_takes_its_limits_from_the_settings(tmp_path):
    from tests.support.install import make_settings

    s = make_settings(tmp_path / "data")
    s.tftp_port, s.tftp_max_per_client, s.tftp_max_timeout = 0, 3, 2
    srv = T.serve(s)
    try:
        assert (srv.cfg.max_per_client, srv.cfg.max_client_timeout) == (3, 2)
        assert negotiate({"timeout": "3"}, 1, srv.cfg)[0] == {}
    finally:
        srv.stop()
