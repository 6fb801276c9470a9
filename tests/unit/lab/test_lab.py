"""The lab's own logic: addressing, the BMC configs it renders, the forwarder, state-driven teardown."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab import bmc
from provisioner.lab.daemon import Forwarder
from provisioner.lab.lab import Lab
from provisioner.lab.spec import LabSpec
from provisioner.settings import Settings


def test_spec_addresses_are_fixed_and_unique_per_subnet() -> None:
    a = LabSpec(hosts=3, subnet="10.213.0.0/24", controller_url="http://127.0.0.1:8700")
    b = LabSpec(hosts=3, subnet="10.214.7.0/24")
    assert a.gateway == "10.213.0.1" and a.guest_url == "http://10.213.0.1:8700"
    assert [a.host_name(i) for i in range(3)] == ["lab-01", "lab-02", "lab-03"]
    assert [a.host_ip(i) for i in range(2)] == ["10.213.0.10", "10.213.0.11"]
    assert a.host_mac(0) == "52:54:00:d5:00:0a" and b.host_mac(0) == "52:54:00:d6:07:0a"
    assert a.proxy_url == "http://10.213.0.1:3142"


def test_bmc_config_keeps_the_password_out_of_argv_and_the_chassis_script_parses(tmp_path: Path) -> None:
    cfg = bmc.BmcConfig(name="lab-01", port=6230, username="admin", password=bmc.new_password(),
                        uri="qemu:///system", state_dir=str(tmp_path / "bmc"))
    bmc.write_config(cfg)
    conf = (tmp_path / "bmc" / "lan.conf")
    assert conf.stat().st_mode & 0o777 == 0o600 and cfg.password in conf.read_text()
    assert cfg.password not in " ".join(bmc.command(cfg))
    assert "password" not in json.loads((tmp_path / "bmc" / "config.json").read_text())
    script = tmp_path / "bmc" / "chassis.sh"
    assert script.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


def test_forwarder_relays_both_ways() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            data = conn.recv(1024)
            conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    fwd = Forwarder(("127.0.0.1", 0), ("127.0.0.1", port))
    threading.Thread(target=fwd.serve, daemon=True).start()
    try:
        with socket.create_connection(fwd.sock.getsockname()[:2], timeout=5) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            assert c.recv(1024) == b"HELLO"
    finally:
        fwd.stop.set()
        fwd.sock.close()
        srv.close()


def test_down_without_state_is_a_no_op_and_removes_recorded_boot_files(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert Lab(tmp_path / "none", settings).down(None) == []
    lab = Lab(tmp_path / "lab", settings)
    f = settings.boot_dir / "prov" / "vmlinuz"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"k")
    lab.state.data = {"spec": {"hosts": 1}, "made": {"boot_files": ["prov/vmlinuz"]}, "guests": [], "hosts": [],
                      "bmcs": []}
    lab.state.save()
    assert lab.down(None) == []
    assert not f.exists() and not (tmp_path / "lab").exists()


def test_libvirt_choice_prefers_a_running_system_libvirtd_and_never_starts_it(tmp_path: Path,
                                                                               monkeypatch: Any) -> None:
    from provisioner.errors import LabError
    from provisioner.lab import guests as labmod

    answering: set[str] = {labmod.SYSTEM_URI}
    monkeypatch.setattr(labmod, "_virsh_ok", lambda uri: uri in answering)
    assert labmod.ensure_libvirtd("", tmp_path) == (labmod.SYSTEM_URI, None)
    with pytest.raises(LabError, match="does not answer"):
        labmod.ensure_libvirtd("qemu+ssh://nowhere/system", tmp_path)

    # no system libvirtd: the lab runs one of its own under the lab dir and records its pid
    answering.clear()
    started: list[Path] = []

    class _Handle:
        uri = "qemu+unix:///system?socket=/x"
        proc = type("P", (), {"pid": 4242})()

    def fake_start(base: Path, *, netns: bool = True, timeout: float = 90.0) -> _Handle:
        assert netns is False  # the guests' taps must join the lab bridge in this namespace
        started.append(base)
        return _Handle()

    monkeypatch.setattr("provisioner.lab.libvirtd.start_libvirtd", fake_start)
    assert labmod.ensure_libvirtd("", tmp_path) == (_Handle.uri, 4242)
    assert started == [tmp_path / "libvirt"]
