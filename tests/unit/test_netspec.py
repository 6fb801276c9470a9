# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""The installed OS's network (provisioner/netspec.py, netview.py, templates/common/network.j2).

* every rule: a bad body is a pydantic error located at the field (HostCreate), and through the
  API a 422 naming that field with nothing stored; a PATCH of NICs alone is checked against the
  stored bonds and VLANs;
* the view: DHCP stays the default, which interface takes DHCP, names, the boot carrier first;
* golden files of every installer file for the sample networks (tests/support/network.py);
* the boot context: a host's stored network reaches the templates; what kickstart cannot say is
  refused naming the field.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from provisioner import netspec, netview
from provisioner import templates_catalog as cat
from provisioner.errors import InvalidInput
from provisioner.render import render
from provisioner.schemas import HostCreate, HostUpdate
from tests.support import network as samples
from tests.support.helpers import assert_golden
from tests.support.install import SSH_KEY, add_host, api, db, settings, snapshot  # noqa: F401

M0, M1, M2 = samples.MAC0, samples.MAC1, samples.MAC2


def body(nics: list[dict[str, Any]] | None = None, **network: Any) -> dict[str, Any]:
    nics = nics if nics is not None else [{"mac": M0, "name": "eth0", "boot": True, "address": "10.0.0.5/24"}]
    return {"name": "web01", "nics": nics, "network": network}


def errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as exc:
        HostCreate.model_validate(raw)
    return [(netspec.Problem(tuple(e["loc"]), "").field, e["msg"]) for e in exc.value.errors()]


NIC = {"mac": M0, "name": "eth0", "boot": True}
TWO = [dict(NIC), {"mac": M1, "name": "eth1"}, {"mac": M2, "name": "eth2"}]

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("no prefix", body([dict(NIC, address="10.0.0.5")]), "nics[0].address", "prefix length"),
    ("not an address", body([dict(NIC, address="10.0.0.500/24")]), "nics[0].address", "not an address"),
    ("network address", body([dict(NIC, address="10.0.0.0/24")]), "nics[0].address", "network address"),
    ("broadcast", body([dict(NIC, address="10.0.0.255/24")]), "nics[0].address", "broadcast address"),
    ("ipv6", body([dict(NIC, address="2001:db8::5/64")]), "nics[0].address", "IPv4"),
    ("gateway outside", body([dict(NIC, address="10.0.0.5/24", gateway="10.0.1.1")]), "nics[0].gateway",
     "outside 10.0.0.0/24"),
    ("gateway is self", body([dict(NIC, address="10.0.0.5/24", gateway="10.0.0.5")]), "nics[0].gateway", "own"),
    ("gateway alone", body([dict(NIC, gateway="10.0.0.1")]), "nics[0].gateway", "needs a static address"),
    ("dns alone", body([dict(NIC, nameservers=["10.0.0.1"])]), "nics[0].nameservers", "needs a static address"),
    ("bad search", body([dict(NIC, address="10.0.0.5/24", search=["a..b"])]), "nics[0].search[0]",
     "not a valid DNS name"),
    ("mtu", body([dict(NIC, mtu=20)]), "nics[0].mtu", "greater than or equal to 68"),
    ("two gateways", body([dict(NIC, address="10.0.0.5/24", gateway="10.0.0.1"),
                           {"mac": M1, "name": "eth1", "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]),
     "nics[1].gateway", "one default gateway per host: nics[0].gateway"),
    ("same address twice", body([dict(NIC, address="10.0.0.5/24"), {"mac": M1, "address": "10.0.0.5/16"}]),
     "nics[1].address", "already the address of nics[0].address"),
    ("long nic name", body([dict(NIC, name="averyverylongname0", address="10.0.0.5/24")]), "nics[0].name",
     "Linux interface name"),
    ("colon nic name", body([dict(NIC, name="eth0:1", address="10.0.0.5/24")]), "nics[0].name",
     "Linux interface name"),
    ("vlan id 0", body(vlans=[{"id": 0, "link": "eth0"}]), "network.vlans[0].id", "greater than or equal to 1"),
    ("vlan id 4095", body(vlans=[{"id": 4095, "link": "eth0"}]), "network.vlans[0].id", "less than or equal to 4094"),
    ("vlan unknown link", body(vlans=[{"id": 10, "link": "eth9"}]), "network.vlans[0].link", "no NIC or bond"),
    ("vlan dotted name", body(vlans=[{"id": 10, "link": "eth0", "name": "eth0.11"}]), "network.vlans[0].name",
     "must end in .10"),
    ("vlan vlanN name", body(vlans=[{"id": 10, "link": "eth0", "name": "vlan11"}]), "network.vlans[0].name",
     "must be vlan10"),
    ("vlan long name", body([dict(NIC, name="enp129s0f1np1", address="10.0.0.5/24")],
                            vlans=[{"id": 1000, "link": "enp129s0f1np1"}]), "network.vlans[0].name",
     "longer than 15 characters"),
    ("vlan twice", body(vlans=[{"id": 10, "link": "eth0"}, {"id": 10, "link": M0, "name": "v10"}]),
     "network.vlans[1].id", "already network.vlans[0]"),
    ("vlan name clash", body(vlans=[{"id": 10, "link": "eth0", "name": "eth0"}]), "network.vlans[0].name",
     "'eth0' is already the name of nics[0].name"),
    ("bond unknown member", body(TWO, bonds=[{"name": "bond0", "members": ["eth1", "eth7"]}]),
     "network.bonds[0].members[1]", "no NIC 'eth7'"),
    ("bond member twice", body(TWO, bonds=[{"name": "bond0", "members": ["eth1", M1]}]),
     "network.bonds[0].members[1]", "listed twice"),
    ("member of two bonds", body(TWO, bonds=[{"name": "bond0", "members": ["eth1"]},
                                             {"name": "bond1", "members": ["eth1", "eth2"]}]),
     "network.bonds[1].members[0]", "already a member of bond bond0"),
    ("member configured", body([*TWO[:1], dict(TWO[1], address="10.9.0.5/24"), TWO[2]],
                               bonds=[{"name": "bond0", "members": ["eth1", "eth2"]}]),
     "nics[1].address", "member of bond bond0: configure the bond"),
    ("member with mtu", body([*TWO[:2], dict(TWO[2], mtu=9000)],
                             bonds=[{"name": "bond0", "members": ["eth1", "eth2"]}]), "nics[2].mtu", "member of bond"),
    ("vlan on a member", body(TWO, bonds=[{"name": "bond0", "members": ["eth1", "eth2"]}],
                              vlans=[{"id": 5, "link": "eth1"}]), "network.vlans[0].link", "put the VLAN on the bond"),
    ("bond name clash", body(TWO, bonds=[{"name": "eth0", "members": ["eth1"]}]), "network.bonds[0].name",
     "already the name of nics[0].name"),
    ("bond bad mode", body(TWO, bonds=[{"name": "bond0", "mode": "lacp", "members": ["eth1"]}]),
     "network.bonds[0].mode", "'802.3ad'"),
    ("bond no members", body(TWO, bonds=[{"name": "bond0", "members": []}]), "network.bonds[0].members",
     "at least 1 item"),
    ("lacp rate wrong mode", body(TWO, bonds=[{"name": "bond0", "mode": "active-backup", "members": ["eth1"],
                                               "options": {"lacp_rate": "fast"}}]),
     "network.bonds[0].options.lacp_rate", "only for mode 802.3ad"),
    ("primary wrong mode", body(TWO, bonds=[{"name": "bond0", "mode": "802.3ad", "members": ["eth1"],
                                             "options": {"primary": "eth1"}}]),
     "network.bonds[0].options.primary", "only for mode active-backup"),
    ("primary not a member", body(TWO, bonds=[{"name": "bond0", "members": ["eth1"], "options": {"primary": "eth2"}}]),
     "network.bonds[0].options.primary", "one of the members"),
    ("updelay without miimon", body(TWO, bonds=[{"name": "bond0", "members": ["eth1"], "options": {"updelay": 200}}]),
     "network.bonds[0].options.updelay", "needs miimon"),
    ("updelay not a multiple", body(TWO, bonds=[{"name": "bond0", "members": ["eth1"],
                                                 "options": {"miimon": 100, "updelay": 150}}]),
     "network.bonds[0].options.updelay", "multiple of miimon"),
    ("bond gateway outside", body(TWO, bonds=[{"name": "bond0", "members": ["eth1"], "address": "10.2.0.5/24",
                                               "gateway": "10.3.0.1"}]), "network.bonds[0].gateway", "outside"),
    ("bond bad name", body(TWO, bonds=[{"name": "bond 0", "members": ["eth1"]}]), "network.bonds[0].name",
     "Linux interface name"),
    ("unknown key", body(vlans=[{"id": 5, "link": "eth0", "vid": 5}]), "network.vlans[0].vid", "Extra inputs"),
    ("vlan id as text", body(vlans=[{"id": "5", "link": "eth0"}]), "network.vlans[0].id", "valid integer"),
]


@pytest.mark.parametrize(("case", "raw", "field", "text"), BAD, ids=[c[0] for c in BAD])
def test_bad_spec_is_an_error_at_its_field(case: str, raw: dict[str, Any], field: str, text: str) -> None:
    got = errors(raw)
    assert any(f == field and text in m for f, m in got), got


def test_good_specs_validate() -> None:
    for name in samples.SAMPLES:
        h = samples.host(name)
        assert not netspec.problems(h.nics, h.network)
    # canonical forms: a netmask becomes a prefix, MACs are normalised, names kept
    h = HostCreate.model_validate(body([dict(NIC, address="10.0.0.5/255.255.255.0")],
                                       vlans=[{"id": 7, "link": "52-54-00-12-34-56"}]))
    assert h.nics[0].address == "10.0.0.5/24" and h.network.vlans[0].link == M0
    # nothing declared: no check at all (a long legacy NIC name stays acceptable)
    assert not netspec.problems(HostCreate.model_validate(body([dict(NIC, name="a" * 20)])).nics,
                                netspec.NetworkIn())


# --------------------------------------------------------------------------- the view
def test_nothing_declared_is_dhcp_as_before() -> None:
    h = HostCreate.model_validate({"name": "web01", "nics": [dict(NIC, ip="10.0.0.9")]})
    assert netview.view(h.nics, h.network) == netview.empty_view()
    # the shipped templates' sample context is that: the existing golden files cover DHCP
    assert cat.sample_context()["network"] == netview.empty_view()


def test_view_rules() -> None:
    v = netview.view(*_hn("trunk"))
    eth = {e["name"]: e for e in v["ethernets"]}
    assert eth["eth0"]["dhcp4"] and eth["eth0"]["carries_boot"] and not eth["eth1"]["has_ip"]
    bond = v["bonds"][0]
    assert bond["members"] == ["eth1", "eth2"] and bond["options"] == {"miimon": 100, "updelay": 200, "primary": "eth1"}
    assert not bond["dhcp4"] and not bond["has_ip"]  # a trunk: only its VLAN has an address
    assert v["vlans"][0]["name"] == "bond0.300" and v["vlans"][0]["parent"]["members"] == ["eth1", "eth2"]
    assert v["gateway"] == {"via": "192.0.2.1", "interface": "bond0.300"}
    assert v["interfaces"][0]["name"] == "eth0"
    # the boot NIC in a bond: the bond carries the boot traffic, first, with DHCP when it has no address
    h = HostCreate.model_validate(body(TWO, bonds=[{"name": "bond0", "members": ["eth0", "eth1"]}],
                                       vlans=[{"id": 9, "link": "bond0"}]))
    v = netview.view(h.nics, h.network)
    assert v["interfaces"][0]["name"] == "bond0" and v["bonds"][0]["dhcp4"]
    assert [e["name"] for e in v["ethernets"]] == ["eth0", "eth1"]  # eth2 is not part of it: left alone
    # unnamed NICs are prov<index>; a static NIC's netmask form for kickstart
    h = HostCreate.model_validate(body([{"mac": M0, "boot": True}, {"mac": M1, "address": "172.16.5.9/20"}]))
    v = netview.view(h.nics, h.network)
    assert [(e["name"], e["netmask"], e["dhcp4"]) for e in v["ethernets"]] == [
        ("prov0", "", True), ("prov1", "255.255.240.0", False)]


def _hn(sample: str) -> tuple[Any, Any]:
    h = samples.host(sample)
    return h.nics, h.network


def test_kickstart_refuses_what_one_line_per_device_cannot_say() -> None:
    for name in samples.SAMPLES:
        nics, network = _hn(name)
        assert netview.kickstart_problems(netview.view(nics, network), nics, network) == []
    h = HostCreate.model_validate(body(vlans=[{"id": 10, "link": "eth0"}, {"id": 20, "link": "eth0"}]))
    found = netview.kickstart_problems(netview.view(h.nics, h.network), h.nics, h.network)
    assert [p.field for p in found] == ["network.vlans[1].link"] and "one VLAN per parent" in found[0].message
    h = HostCreate.model_validate(body(TWO, bonds=[{"name": "bond0", "members": ["eth1"], "address": "10.7.0.5/24"}],
                                       vlans=[{"id": 10, "link": "bond0"}]))
    found = netview.kickstart_problems(netview.view(h.nics, h.network), h.nics, h.network)
    assert found and "addresses of its own" in found[0].message


# --------------------------------------------------------------------------- golden files
@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.support.install import make_settings

    return make_settings(tmp_path_factory.mktemp("netspec-golden"))


GOLDEN = {"kickstart": "kickstart.ks", "preseed": "preseed.cfg", "autoinstall": "autoinstall-user-data.yaml",
          "image": "network-config.yaml"}


@pytest.mark.parametrize("method", list(GOLDEN))
@pytest.mark.parametrize("sample", list(samples.SAMPLES))
def test_golden(sample: str, method: str, shipped) -> None:  # type: ignore[no-untyped-def]
    text = render(samples.METHODS[method], samples.context(method, sample), shipped)
    assert_golden(f"network/{sample}/{GOLDEN[method]}", text)


def test_agent_writes_the_declared_network_config(shipped) -> None:  # type: ignore[no-untyped-def]
    ctx = samples.context("image", "static-vlan")
    ctx["image"] = {"url": "http://h/i.raw", "sha256": "ab" * 32, "size": 1 << 20, "format": "raw"}
    ctx["deploy"] = {"instance_id": "prov-7-1", "after": "reboot", "on_error": "shell"}
    agent = render("deploy/agent.sh.j2", ctx, shipped)
    import shlex

    seed = render("deploy/nocloud/network-config.j2", ctx, shipped)
    assert f"printf '%s' {shlex.quote(seed)} >\"$SEED/network-config\"" in agent
    assert '"eth0.100":' in seed and "gateway4:" in seed


# --------------------------------------------------------------------------- through the API and the DB
def test_api_refuses_naming_the_field_and_stores_nothing(api, db) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(db)
    bad = body(TWO, bonds=[{"name": "bond0", "members": ["eth1", "nope"]}])
    r = api.client.post("/api/v1/hosts", json=bad, headers=api.auth)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "network.bonds[0].members[1]" and "no NIC 'nope'" in r.json()["message"]
    assert snapshot(db) == before
    good = copy.deepcopy(samples.SAMPLES["trunk"])
    r = api.client.post("/api/v1/hosts", json=good, headers=api.auth)
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["network"]["bonds"][0]["members"] == ["eth1", "eth2"]
    assert got["network"]["vlans"][0]["address"] == "192.0.2.21/24"
    assert got["nics"][0] == {"mac": M0, "name": "eth0", "boot": True, "ip": "10.10.0.11", "address": None,
                              "gateway": None, "nameservers": [], "search": [], "mtu": None}
    # PATCH of the NICs alone is checked against the stored bond: dropping a member is refused
    before = snapshot(db)
    r = api.client.patch("/api/v1/hosts/web01", json={"nics": good["nics"][:2]}, headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "network.bonds[0].members[1]", r.text
    assert snapshot(db) == before
    # ... and the network alone against the stored NICs
    r = api.client.patch("/api/v1/hosts/web01", json={"network": {"vlans": [{"id": 5, "link": "eth1"}],
                                                                  "bonds": good["network"]["bonds"]}},
                         headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "network.vlans[0].link", r.text
    # both at once: located in the body
    r = api.client.patch("/api/v1/hosts/web01", json={"nics": [NIC], "network": {"vlans": [{"id": 5, "link": "x1"}]}},
                         headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "network.vlans[0].link", r.text
    # a good PATCH replaces the network; a listing page carries it too
    r = api.client.patch("/api/v1/hosts/web01", json={"network": {"vlans": [{"id": 5, "link": "eth0"}]}},
                         headers=api.auth)
    assert r.status_code == 200 and r.json()["network"] == {
        "bonds": [], "vlans": [{"id": 5, "link": "eth0", "name": None, "address": None, "gateway": None,
                                "nameservers": [], "search": [], "mtu": None}]}, r.text
    page = api.client.get("/api/v1/hosts", headers=api.auth).json()
    assert page["data"][0]["network"]["vlans"][0]["id"] == 5


def test_boot_context_renders_the_stored_network(db, settings) -> None:  # type: ignore[no-untyped-def]
    from provisioner.models import Nic

    host = add_host(db, method="kickstart", os_family="rhel", params={"ssh_authorized_keys": [SSH_KEY]})
    nic = db.query(Nic).filter(Nic.host_id == host.id).one()
    nic.address, nic.gateway = "10.10.0.40/24", "10.10.0.1"
    host.network_vlans = [{"id": 42, "link": "eth0", "address": "10.42.0.40/24"}]
    db.add_all([nic, host])
    db.commit()
    text = cat.render_install_file(db, host, None, settings)
    assert f"network --device={nic.mac} --bootproto=static --ip=10.10.0.40 --netmask=255.255.255.0 " \
           "--gateway=10.10.0.1 --onboot=yes --hostname=" in text
    assert "network --device=eth0 --vlanid=42 --interfacename=eth0.42 --bootproto=static --ip=10.42.0.40" in text
    # a second VLAN on eth0 cannot be a kickstart line: refused before anything boots, naming the field
    host.network_vlans = [*host.network_vlans, {"id": 43, "link": "eth0"}]
    db.add(host)
    db.commit()
    with pytest.raises(InvalidInput) as exc:
        cat.render_install_file(db, host, None, settings)
    assert exc.value.details["field"] == "network.vlans[1].link"
    # prov reaches the installed host at the static address (no ip_address given), not at the reservation
    from provisioner.conductor import install, inventory

    assert host.ip_address is None and nic.ip
    assert install._ssh_address(db, host) == "10.10.0.40" == inventory.host_address(db, host)
    # the same host deploying an image: NoCloud has no such limit
    update = HostUpdate.model_validate({"network": {"vlans": host.network_vlans}})
    assert update.network is not None and len(update.network.vlans) == 2


# --------------------------------------------------------------------------- GitOps inventories
INVENTORY = """apiVersion: prov/v1
hosts:
  - name: web01
    nics:
      - mac: "52:54:00:12:34:56"
        name: eth0
        boot: true
        address: 10.10.0.21/24
        gateway: 10.10.0.1
    network:
      vlans:
        - {id: 100, link: eth0, address: 10.30.0.21/24}
"""


def test_inventory_carries_the_network_and_plans_its_changes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from provisioner.gitops import inventory as inv_mod
    from provisioner.gitops.plan import host_body, make_plan
    from provisioner.gitops.world import World

    f = tmp_path / "hosts.yaml"
    f.write_text(INVENTORY)
    inv = inv_mod.load(f)
    body = host_body(inv.hosts["web01"])
    assert body["nics"][0]["address"] == "10.10.0.21/24" and body["network"]["vlans"][0]["id"] == 100
    # the body is what the API takes: the same model, the same rules
    HostCreate.model_validate(body)
    # the controller has the host without its network: the plan changes nics and network
    have = {**body, "id": 1, "state": "available", "power_state": "off", "bmc": {"kind": "manual"},
            "nics": [{"mac": "52:54:00:12:34:56", "name": "eth0", "boot": True, "ip": None}],
            "network": {"bonds": [], "vlans": []}}
    plan = make_plan(inv, World(hosts={"web01": have}), password_fingerprints={})
    fields = {c.field for a in plan.actions if a.name == "web01" for c in a.changes}
    assert {"nics", "network"} <= fields
    # ... and nothing once it matches
    plan = make_plan(inv, World(hosts={"web01": {**have, "nics": body["nics"], "network": body["network"]}}),
                     password_fingerprints={})
    assert not [c for a in plan.actions if a.name == "web01" for c in a.changes]


def test_inventory_network_errors_are_at_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from provisioner.gitops import inventory as inv_mod

    f = tmp_path / "hosts.yaml"
    f.write_text(INVENTORY.replace("gateway: 10.10.0.1", "gateway: 10.99.0.1").replace("id: 100", "id: 5000"))
    with pytest.raises(inv_mod.InventoryError) as exc:
        inv_mod.load(f)
    text = str(exc.value)
    assert "hosts.yaml:9" in text and "gateway" in text and "outside 10.10.0.0/24" in text, text
