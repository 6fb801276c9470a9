"""bootfiles.populate and service.start (TFTP part) on a temp data dir."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from provisioner.drivers.boot import bootfiles, service
from provisioner.drivers.boot.bootfiles import BootFile
from provisioner.settings import Settings
from tests.support.helpers import free_port


def test_populate(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"ipxe" * 100)
    files = (BootFile("undionly.kpxe", (str(tmp_path / "missing"), str(src)), True),
             BootFile("pxelinux.0", (str(tmp_path / "nope"),), False))
    root = tmp_path / "boot"
    assert bootfiles.populate(root, files) == {"undionly.kpxe": "installed", "pxelinux.0": "missing"}
    assert (root / "undionly.kpxe").read_bytes() == src.read_bytes()
    assert not (root / "undionly.kpxe").is_symlink()
    assert bootfiles.populate(root, files)["undionly.kpxe"] == "current"
    src.write_bytes(b"new")
    assert bootfiles.populate(root, files)["undionly.kpxe"] == "installed"
    assert (root / "undionly.kpxe").read_bytes() == b"new"


def test_service_starts_tftp(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    s = Settings(data_dir=tmp_path, tftp_port=port, tftp_host="127.0.0.1", dhcp_enabled=False)
    stop = service.start(s)
    try:
        (s.boot_dir / "hello.txt").write_text("hi\n")
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(3)
        c.sendto(b"\x00\x01hello.txt\x00octet\x00", ("127.0.0.1", port))
        pkt, peer = c.recvfrom(600)
        c.sendto(struct.pack("!HH", 4, 1), peer)
        c.close()
        assert pkt == b"\x00\x03\x00\x01hi\n"
    finally:
        stop()


def test_service_survives_busy_port(tmp_path):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    s = Settings(data_dir=tmp_path, tftp_port=blocker.getsockname()[1], dhcp_enabled=False)
    try:
        stop = service.start(s)  # logs the failure, does not raise
        stop()
    finally:
        blocker.close()
    assert Path(s.boot_dir).is_dir()
