"""``prov host add|set --network-file``: a host's static addresses, bonds and VLANs from a YAML file;
``prov host show`` prints them. A bad file or a bad network is one error line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.unit.cli.conftest import Prov, one_error_line


def _macs(uid: str) -> tuple[str, str]:
    h = uid[:6]
    return f"52:54:{h[0:2]}:{h[2:4]}:{h[4:6]}:01", f"52:54:{h[0:2]}:{h[2:4]}:{h[4:6]}:02"


def test_add_show_and_set_a_declared_network(prov: Prov, uid: str, tmp_path: Path) -> None:
    m0, m1 = _macs(uid)
    f = tmp_path / "net.yaml"
    f.write_text(yaml.safe_dump({
        "nics": [{"mac": m0, "name": "eth0", "boot": True, "address": "10.40.0.5/24", "gateway": "10.40.0.1",
                  "nameservers": ["10.40.0.1"]}, {"mac": m1, "name": "eth1"}],
        "vlans": [{"id": 100, "link": "eth0", "address": "10.41.0.5/24"}]}))
    r = prov("host", "add", f"net-{uid}", "--network-file", str(f), "-o", "json")
    assert r.exit_code == 0, r.output
    host = json.loads(r.stdout)
    assert host["nics"][0]["address"] == "10.40.0.5/24" and host["network"]["vlans"][0]["id"] == 100
    shown = yaml.safe_load(prov("host", "show", f"net-{uid}", "-o", "yaml").stdout)
    assert shown["network"]["vlans"][0]["address"] == "10.41.0.5/24"
    assert shown["nics"][0]["gateway"] == "10.40.0.1"
    # set: the network alone (bonds and VLANs replaced), checked against the stored NICs
    g = tmp_path / "bond.yaml"
    g.write_text(yaml.safe_dump({"bonds": [{"name": "bond0", "members": ["eth1"], "address": "10.42.0.5/24"}]}))
    r = prov("host", "set", f"net-{uid}", "--network-file", str(g), "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["network"] == {
        "bonds": [{"name": "bond0", "mode": "active-backup", "members": ["eth1"], "options": {
            "miimon": None, "lacp_rate": None, "xmit_hash_policy": None, "primary": None, "updelay": None,
            "downdelay": None}, "address": "10.42.0.5/24", "gateway": None, "nameservers": [], "search": [],
            "mtu": None}], "vlans": []}


def test_bad_files_and_bad_networks_are_one_line(prov: Prov, uid: str, tmp_path: Path) -> None:
    m0, _ = _macs(uid)
    cases = {
        "nics: [": "--network-file",
        "- just a list": "a mapping of nics, bonds, vlans",
        "vlan: []": "unknown key 'vlan'",
        "vlans: {id: 5}": "vlans must be a list",
        f"nics: [{{mac: '{m0}', address: 10.0.0.5}}]": "nics[0].address",
        f"nics: [{{mac: '{m0}'}}]\nvlans: [{{id: 5000, link: prov0}}]": "network.vlans[0].id",
    }
    for i, (text, needle) in enumerate(cases.items()):
        f = tmp_path / f"bad{i}.yaml"
        f.write_text(text + "\n")
        r = prov("host", "add", f"bad-{uid}-{i}", "--network-file", str(f))
        assert r.exit_code != 0, text
        assert needle in one_error_line(r), (text, r.stderr)
    f = tmp_path / "nics.yaml"
    f.write_text(f"nics: [{{mac: '{m0}'}}]\n")
    r = prov("host", "add", f"both-{uid}", "--network-file", str(f), "--mac", m0)
    assert r.exit_code == 2 and "--mac" in one_error_line(r)
    assert prov("host", "show", f"bad-{uid}-4").exit_code != 0  # nothing was made
