# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""The boot services' wiring: TFTP with the conductor's per-MAC hook, DHCP reservations from the database."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import boot_service
from provisioner.drivers.boot.fake import FakeBoot
from provisioner.drivers.boot.tftp import TftpNotFound
from provisioner.models import Host, Nic
from provisioner.settings import Settings
from tests.support.helpers import free_port
from tests.support.install import add_host, db, settings  # noqa: F401


def test_service_starts_tftp(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    s = Settings(data_dir=tmp_path, tftp_port=port, tftp_host="127.0.0.1", dhcp_enabled=False)
    stop = boot_service.start(s)
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
        stop = boot_service.start(s)  # logs the failure, does not raise
        stop()
    finally:
        blocker.close()
    assert Path(s.boot_dir).is_dir()


def test_host_entries_follow_the_database(db, settings):
    on = add_host(db, name="Web_01", netboot=True)
    off = add_host(db, netboot=False)
    db.add(Nic(host_id=off.id, mac="52:54:00:aa:00:02", name="eth1", boot=False))
    db.commit()
    entries = {e.mac: e for e in boot_service.host_entries(db)}
    assert len(entries) == 3
    web = entries[crud.host_nics(db, host_id=on.id)[0].mac]
    assert web.hostname == "web-01" and web.netboot
    assert not any(e.netboot for e in entries.values() if e is not web)


def test_start_feeds_the_fake_driver_and_the_tftp_hook_follows_the_policy(db, settings):
    host = add_host(db, state=S.ACTIVE, netboot=False)
    mac = crud.host_nics(db, host_id=host.id)[0].mac
    s = settings.model_copy(update={"tftp_enabled": True, "dhcp_enabled": True})
    boot = FakeBoot()
    stop = boot_service.start(s, boot)
    try:
        assert boot.calls[:2] == [("start_tftp",), ("start_dhcp", 1)]
        assert [e.mac for e in boot.reservations] == [mac]
        hook = boot.tftp_hook
        assert hook is not None
        assert hook("undionly.kpxe", ("10.0.0.9", 2000)) is None  # not a per-MAC path: a file of the root
        text = hook(f"pxelinux.cfg/01-{mac.replace(':', '-')}", ("10.0.0.9", 2000))
        assert text is not None and text.startswith(b"pxelinux/local")
        with pytest.raises(TftpNotFound):
            hook("grub.cfg-01-02-00-00-00-00-99", ("10.0.0.9", 2000))  # unknown MAC: nothing

        # a host change reaches the DHCP side through notify_hosts_changed()
        db.add(Nic(host_id=host.id, mac="52:54:00:aa:00:03", name="eth1"))
        db.commit()
        boot_service.notify_hosts_changed()
        deadline = time.monotonic() + 5
        while len(boot.reservations) != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(boot.reservations) == 2 and ("sync_reservations", 2) in boot.calls
    finally:
        stop()
    assert not boot.tftp_running and not boot.dhcp_running
    assert boot.calls[-2:] == [("stop_dhcp",), ("stop_tftp",)]
    assert db.get(Host, host.id) is not None
