"""dnsmasq config rendering, input validation and incremental host files (no dnsmasq process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.drivers.boot import dhcp as D
from provisioner.errors import InvalidInput
from provisioner.settings import Settings
from tests.support.helpers import assert_golden


def cfg(tmp_path: Path, **kw) -> D.DhcpConfig:
    base = dict(interface="br-prov", server_ip="10.20.0.1", http_base="http://10.20.0.1:8700",
                state_dir=Path("/var/lib/prov/dnsmasq"), range_start="10.20.0.100", range_end="10.20.0.200",
                user="root")
    base.update(kw)
    return D.DhcpConfig(**base)  # type: ignore[arg-type]


def test_full_mode_golden(tmp_path):
    assert_golden("dnsmasq/full.conf", cfg(tmp_path).render())


def test_full_mode_discover_golden(tmp_path):
    assert_golden("dnsmasq/full-discover.conf", cfg(tmp_path, unknown_mac_action="discover", ipv6_ra=False).render())


def test_proxy_mode_golden(tmp_path):
    text = cfg(tmp_path, mode="proxy", range_start="", range_end="", subnet="10.20.0.0").render()
    assert "dhcp-range=set:prov,10.20.0.0,proxy" in text
    assert "dhcp-authoritative" not in text
    assert_golden("dnsmasq/proxy.conf", text)


def test_host_file_golden():
    assert_golden("dnsmasq/host-netboot.conf",
                  D.render_host(D.HostEntry(mac="52:54:00:AA:BB:01", hostname="node1", ip="10.20.0.11", netboot=True)))
    assert_golden("dnsmasq/host-local.conf", D.render_host(D.HostEntry(mac="52-54-00-aa-bb-02", hostname="node2")))


@pytest.mark.parametrize(
    "kw",
    [
        {"interface": "br0\nuser=root"},
        {"server_ip": "10.0.0.1,evil"},
        {"range_start": "10.0.0.300"},
        {"mode": "proxy", "subnet": ""},
        {"range_end": ""},
        {"unknown_mac_action": "install"},
        {"lease_time": "1h\nenable-tftp"},
        {"http_base": "http://x/\ndhcp-boot=evil"},
        {"mode": "weird"},
    ],
)
def test_config_rejects_injection_and_nonsense(tmp_path, kw):
    with pytest.raises(InvalidInput):
        cfg(tmp_path, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"mac": "52:54:00:aa:bb", "hostname": "a"},
        {"mac": "52:54:00:aa:bb:cc\n", "hostname": "a"},
        {"mac": "52:54:00:aa:bb:cc", "hostname": "a,set:netboot"},
        {"mac": "52:54:00:aa:bb:cc", "hostname": "a", "ip": "10.0.0.1,ignore"},
    ],
)
def test_host_entry_rejects(kw):
    with pytest.raises(InvalidInput):
        D.HostEntry(**kw)


def test_incremental_host_files(tmp_path):
    m = D.DnsmasqManager(cfg(tmp_path, state_dir=tmp_path / "st"))
    m.write_config()
    a = D.HostEntry(mac="52:54:00:00:00:01", hostname="a", ip="10.20.0.11", netboot=True)
    b = D.HostEntry(mac="52:54:00:00:00:02", hostname="b", ip="10.20.0.12")
    assert m.sync([a, b]) == 2
    files = sorted(p.name for p in m.cfg.hosts_dir.iterdir())
    assert files == ["52-54-00-00-00-01.conf", "52-54-00-00-00-02.conf"]
    mtime_b = (m.cfg.hosts_dir / "52-54-00-00-00-02.conf").stat().st_mtime_ns
    # one host changed = one file changed
    a_off = D.HostEntry(mac=a.mac, hostname="a", ip=a.ip, netboot=False)
    assert m.sync([a_off, b]) == 1
    assert (m.cfg.hosts_dir / "52-54-00-00-00-02.conf").stat().st_mtime_ns == mtime_b
    assert "set:netboot" not in (m.cfg.hosts_dir / "52-54-00-00-00-01.conf").read_text()
    assert m.sync([a_off, b]) == 0
    assert m.sync([b]) == 1
    assert not (m.cfg.hosts_dir / "52-54-00-00-00-01.conf").exists()
    assert not list((tmp_path / "st" / "tmp").iterdir())  # no temp files left behind


def test_from_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "interface_ipv4", lambda _i: "10.9.0.1")
    s = Settings(data_dir=tmp_path, dhcp_interface="br9", dhcp_range="10.9.0.50,10.9.0.60,255.255.255.0,30m",
                 port=8800)
    c = D.DhcpConfig.from_settings(s)
    assert (c.mode, c.range_start, c.range_end, c.lease_time) == ("full", "10.9.0.50", "10.9.0.60", "30m")
    assert c.http_base == "http://10.9.0.1:8800" and c.tftp_server == "10.9.0.1"
    s = Settings(data_dir=tmp_path, dhcp_interface="br9", dhcp_range="10.9.0.0,proxy", unknown_mac_action="discover")
    c = D.DhcpConfig.from_settings(s)
    assert (c.mode, c.subnet, c.unknown_mac_action) == ("proxy", "10.9.0.0", "discover")
    with pytest.raises(InvalidInput):
        D.DhcpConfig.from_settings(Settings(data_dir=tmp_path, dhcp_interface="br9", dhcp_range="10.9.0.1"))
    with pytest.raises(InvalidInput):
        D.DhcpConfig.from_settings(Settings(data_dir=tmp_path))


def test_missing_interface_is_boot_error():
    with pytest.raises(D.BootError):
        D.interface_ipv4("prov-nonexist0")
