"""Fast tests of our TFTP server with a tiny raw-socket client (real clients: tests/integration/netboot)."""

from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path

import pytest

from provisioner.drivers.boot import tftp as T
from provisioner.drivers.boot.tftp_packets import MAX_BLKSIZE, negotiate
from provisioner.errors import BootError

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


def rrq(name: str | bytes, mode: bytes = b"octet", **opts: int | str) -> bytes:
    fn = name.encode() if isinstance(name, str) else name
    out = struct.pack("!H", RRQ) + fn + b"\0" + mode + b"\0"
    for k, v in opts.items():
        out += k.encode() + b"\0" + str(v).encode() + b"\0"
    return out


def fetch(port: int, name: str | bytes, *, mode: bytes = b"octet", drop_every: int = 0,
          sock_timeout: float = 3.0, **opts: int | str) -> tuple[bytes, dict[str, str]]:
    """Minimal RFC 1350/2347/7440 client. Raises RuntimeError(code, msg) on a TFTP ERROR."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(sock_timeout)
    try:
        s.sendto(rrq(name, mode, **opts), ("127.0.0.1", port))
        data = bytearray()
        oack: dict[str, str] = {}
        blksize = 512
        window = int(opts.get("windowsize", 1))
        expected = 1
        in_window = 0
        received = 0
        while True:
            pkt, peer = s.recvfrom(70000)
            op = struct.unpack("!H", pkt[:2])[0]
            if op == ERROR:
                code = struct.unpack("!H", pkt[2:4])[0]
                raise RuntimeError(code, pkt[4:-1].decode())
            if op == OACK:
                parts = pkt[2:].split(b"\0")[:-1]
                oack = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
                blksize = int(oack.get("blksize", blksize))
                window = int(oack.get("windowsize", 1))
                s.sendto(struct.pack("!HH", ACK, 0), peer)
                continue
            assert op == DATA
            block = struct.unpack("!H", pkt[2:4])[0]
            received += 1
            if drop_every and received % drop_every == 0:
                continue  # simulate loss
            if block != expected & 0xFFFF:
                s.sendto(struct.pack("!HH", ACK, (expected - 1) & 0xFFFF), peer)
                in_window = 0
                continue
            data += pkt[4:]
            expected += 1
            in_window += 1
            last = len(pkt) - 4 < blksize
            if last or in_window >= window:
                s.sendto(struct.pack("!HH", ACK, block), peer)
                in_window = 0
            if last:
                return bytes(data), oack
    finally:
        s.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "undionly.kpxe").write_bytes(os.urandom(70_000))
    (r / "empty").write_bytes(b"")
    (r / "exact").write_bytes(b"x" * 1024)  # a multiple of blksize: needs a trailing empty block
    (r / "sub").mkdir()
    (r / "sub" / "f.txt").write_bytes(b"line1\nline2\r\n")
    outside = tmp_path / "secret"
    outside.write_text("top secret")
    (r / "escape").symlink_to(outside)
    (r / "inside-link").symlink_to(r / "sub" / "f.txt")
    return r


@pytest.fixture
def server(root: Path):
    records: list[T.TransferRecord] = []

    def dynamic(rel: str, _peer: tuple[str, int]) -> bytes | None:
        found = T.match_dynamic(rel)
        if found is None:
            return None
        kind, mac = found
        if mac == "52:54:00:00:00:01":
            return f"{kind} config for {mac}\n".encode()
        raise T.TftpNotFound(rel)

    srv = T.TftpServer(T.TftpConfig(root=root, port=0, timeout=0.2, retries=3, dynamic=dynamic,
                                    on_transfer=records.append)).start()
    srv.records = records  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_plain_download(server, root):
    data, oack = fetch(server.port, "undionly.kpxe")
    assert data == (root / "undionly.kpxe").read_bytes()
    assert oack == {}


def test_options_negotiated(server, root):
    data, oack = fetch(server.port, "undionly.kpxe", blksize=1468, tsize=0, timeout=3)
    assert data == (root / "undionly.kpxe").read_bytes()
    assert oack == {"blksize": "1468", "tsize": "70000", "timeout": "3"}


def test_windowsize_and_loss(server, root):
    data, oack = fetch(server.port, "undionly.kpxe", blksize=512, windowsize=8, drop_every=17)
    assert oack["windowsize"] == "8"
    assert data == (root / "undionly.kpxe").read_bytes()


def test_lockstep_loss_recovers(server, root):
    data, _ = fetch(server.port, "undionly.kpxe", blksize=8192, drop_every=3)
    assert data == (root / "undionly.kpxe").read_bytes()


def test_unknown_and_bad_options_ignored(server):
    _, oack = fetch(server.port, "exact", blksize="abc", foo=1, BLKSIZE=1000)
    assert oack == {"blksize": "1000"}


def test_empty_and_exact_multiple(server):
    assert fetch(server.port, "empty")[0] == b""
    assert fetch(server.port, "exact")[0] == b"x" * 1024


def test_netascii(server):
    assert fetch(server.port, "sub/f.txt", mode=b"netascii")[0] == b"line1\r\nline2\r\x00\r\n"


def test_inside_symlink_ok(server):
    assert fetch(server.port, "inside-link")[0] == b"line1\nline2\r\n"


@pytest.mark.parametrize(
    "name,code",
    [
        ("../secret", 2),
        ("sub/../../secret", 2),
        ("/etc/passwd", 2),
        ("escape", 2),
        ("sub\\..\\..\\secret", 2),
        ("nope", 1),
        ("sub", 1),  # a directory is not a file
    ],
)
def test_refused(server, name, code):
    with pytest.raises(RuntimeError) as ei:
        fetch(server.port, name)
    assert ei.value.args[0] == code


def test_write_refused(server, root):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(struct.pack("!H", WRQ) + b"new.bin\0octet\0", ("127.0.0.1", server.port))
    pkt, _ = s.recvfrom(1000)
    s.close()
    assert struct.unpack("!HH", pkt[:4]) == (ERROR, 2)
    assert not (root / "new.bin").exists()


def test_mail_mode_refused(server):
    with pytest.raises(RuntimeError) as ei:
        fetch(server.port, "exact", mode=b"mail")
    assert ei.value.args[0] == 4


def test_dynamic_per_mac(server):
    assert fetch(server.port, "pxelinux.cfg/01-52-54-00-00-00-01")[0] == b"pxelinux config for 52:54:00:00:00:01\n"
    assert fetch(server.port, "grub/grub.cfg-01-52-54-00-00-00-01")[0] == b"grub config for 52:54:00:00:00:01\n"
    with pytest.raises(RuntimeError) as ei:
        fetch(server.port, "grub.cfg-01-52-54-00-00-00-99")
    assert ei.value.args[0] == 1


def test_match_dynamic():
    assert T.match_dynamic("pxelinux.cfg/01-AA-bb-cc-dd-ee-ff") == ("pxelinux", "aa:bb:cc:dd:ee:ff")
    assert T.match_dynamic("grub.cfg-01-aa-bb-cc-dd-ee-ff") == ("grub", "aa:bb:cc:dd:ee:ff")
    assert T.match_dynamic("pxelinux.cfg/default") is None
    assert T.match_dynamic("pxelinux.cfg/01-aa-bb-cc-dd-ee") is None


def test_transfers_recorded(server):
    fetch(server.port, "exact")
    with pytest.raises(RuntimeError):
        fetch(server.port, "../x")
    deadline = 50
    while len(server.records) < 2 and deadline:
        deadline -= 1
        import time

        time.sleep(0.02)
    ok = [r for r in server.records if r.ok]
    bad = [r for r in server.records if not r.ok]
    assert ok[0].filename == "exact" and ok[0].bytes_sent == 1024 and ok[0].client.startswith("127.0.0.1:")
    assert bad and "outside" in bad[0].error


def test_fuzz_never_kills_server(server, root):
    """Random and malformed datagrams at the listener and at a live transfer socket."""
    rnd = random.Random(4)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    samples = [b"", b"\x00", b"\x00\x01", b"\x00\x01\x00", b"\x00\x01abc", b"\x00\x01a\x00octet",
               b"\x00\x01a\x00octet\x00blksize\x00", b"\x00\x01a\x00octet\x00blksize\x00-5\x00",
               b"\x00\x01\xff\xfe\x00octet\x00", b"\x00\x05\x00\x01", b"\x00\x04", b"\x00\x09abc",
               b"\x00\x01" + b"A" * 5000, b"\x00\x01x\x00octet\x00" + b"o\x00" * 300]
    samples += [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 600))) for _ in range(300)]
    samples += [struct.pack("!H", rnd.choice([1, 2, 3, 4, 5, 6])) + bytes(rnd.getrandbits(8) for _ in range(40))
                for _ in range(200)]
    for d in samples:
        s.sendto(d, ("127.0.0.1", server.port))
    # and junk at a transfer in progress (its TID): start a fetch, spray its port
    s.sendto(rrq("undionly.kpxe"), ("127.0.0.1", server.port))
    try:
        while True:
            pkt, peer = s.recvfrom(70000)
            if pkt[:2] == b"\x00\x03":
                for _ in range(50):
                    s.sendto(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 20))), peer)
                break
    except TimeoutError:
        pass
    s.close()
    data, _ = fetch(server.port, "undionly.kpxe", blksize=1400)
    assert data == (root / "undionly.kpxe").read_bytes()


def test_block_number_rollover(tmp_path):
    """More than 65535 blocks: the block number wraps to 0 (what tftpd-hpa and the clients do)."""
    r = tmp_path / "r"
    r.mkdir()
    payload = os.urandom(66_000 * 8 + 3)
    (r / "big").write_bytes(payload)
    with T.TftpServer(T.TftpConfig(root=r, port=0)) as srv:
        data, _ = fetch(srv.port, "big", blksize=8)
    assert data == payload


def test_negotiate_clamps():
    cfg = T.TftpConfig(root=Path("/"), max_windowsize=16)
    oack, blk, to, win = negotiate({"blksize": "100000", "windowsize": "999", "timeout": "0", "tsize": "0"}, 7, cfg)
    assert (blk, win, to) == (MAX_BLKSIZE, 16, cfg.timeout)
    assert oack == {"blksize": str(MAX_BLKSIZE), "windowsize": "16", "tsize": "7"}


def test_busy_port_is_a_boot_error():
    with T.TftpServer(T.TftpConfig(root=Path("/tmp"), port=0)) as srv, pytest.raises(BootError):
        T.TftpServer(T.TftpConfig(root=Path("/tmp"), port=srv.port, host="127.0.0.1"))
