# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""A boot agent serves the hosts of its networks: the rack's network, else the boot NIC's address."""

from __future__ import annotations

from sqlmodel import select

from provisioner import changes
from provisioner.conductor import boot_service
from provisioner.conductor.boot_agent import NetworkFilter
from provisioner.models import Nic, Rack
from tests.support.install import add_host, db, settings  # noqa: F401


def test_filter_rules():
    f = NetworkFilter.from_cidrs(["10.99.0.0/24", "fd00:99::/64"])
    assert f.serves("10.99.0.0/25", None)  # a rack network inside ours
    assert f.serves("10.99.0.0/24", "10.1.1.1")  # the rack decides, not the NIC
    assert not f.serves("10.98.0.0/24", "10.99.0.5")
    assert not f.serves("10.0.0.0/8", None)  # wider than ours: not ours
    assert f.serves(None, "10.99.0.7")
    assert f.serves(None, "fd00:99::5")
    assert not f.serves(None, "10.98.0.7")
    assert not f.serves(None, None)  # neither: never guessed
    assert not f.serves("fd00:98::/64", None)
    assert NetworkFilter().serves(None, None)  # no networks: everything, as today
    assert f.serves_host(None, [None, "10.99.0.9"])
    assert not f.serves_host("10.98.0.0/24", ["10.99.0.9"])


def test_host_entries_by_network(db, settings):
    rack_a = Rack(name="ra", network="10.99.0.0/24")
    rack_b = Rack(name="rb", network="10.98.0.0/24")
    rack_none = Rack(name="rn")
    db.add_all([rack_a, rack_b, rack_none])
    db.commit()
    in_a = add_host(db, name="a1", netboot=True)
    in_b = add_host(db, name="b1", netboot=True)
    by_ip = add_host(db, name="c1", netboot=True)
    nowhere = add_host(db, name="d1", netboot=True)
    for host, rack in ((in_a, rack_a), (in_b, rack_b), (by_ip, rack_none), (nowhere, None)):
        host.rack_id = rack.id if rack else None
        db.add(host)
    db.commit()
    nics = {h.name: db.exec(select(Nic).where(Nic.host_id == h.id)).one() for h in (in_a, in_b, by_ip, nowhere)}
    nics["a1"].ip = "10.98.0.10"  # the rack's network wins over the NIC's address
    nics["c1"].ip = "10.99.0.20"
    nics["d1"].ip = "192.0.2.1"
    db.add_all(nics.values())
    db.commit()
    served = {e.mac for e in boot_service.host_entries(db, NetworkFilter.from_cidrs(["10.99.0.0/24"]))}
    assert served == {nics["a1"].mac, nics["c1"].mac}
    other = {e.mac for e in boot_service.host_entries(db, NetworkFilter.from_cidrs(["10.98.0.0/24"]))}
    assert other == {nics["b1"].mac}
    assert len(boot_service.host_entries(db)) == 4  # no networks: every host, as before
    f = NetworkFilter.from_cidrs(["10.99.0.0/24"])
    assert boot_service.host_served(db, in_a, f) and not boot_service.host_served(db, in_b, f)
    assert boot_service._mac_served(db, nics["c1"].mac.replace(":", "-"), f)
    assert not boot_service._mac_served(db, "52:54:00:ff:ff:ff", f)  # unknown MAC: not a filtered agent's


def test_commit_tells_local_subscribers(db, settings):
    heard: list[str] = []
    unsubscribe = changes.subscribe(heard.append)
    try:
        host = add_host(db, name="n1", netboot=False)
        heard.clear()
        host.netboot = True
        db.add(host)
        db.flush()
        assert heard == []  # not before the commit
        db.commit()
        assert heard == ["host"]
        host.netboot = False
        db.add(host)
        db.flush()
        db.rollback()
        assert heard == ["host"]  # a rollback tells nobody
    finally:
        unsubscribe()
