"""The libvirt driver against libvirt's in-process test driver (test:///default): logic, refusals, cleanup."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.libvirt import VirtConnection, open_connection
from provisioner.drivers.virt.libvirt_host import ssh_target
from provisioner.drivers.virt.spec import GuestSpec, NetworkSpec
from provisioner.errors import Conflict, InvalidInput, NotFound, VirtError, VirtRefused

POOL = "default-pool"  # defined by the test driver


def gspec(name: str, **kw: Any) -> GuestSpec:
    data: dict[str, Any] = {"name": name, "memory_mib": 256, "disks": [{"size_gib": 1, "pool": POOL}]}
    data.update(kw)
    return GuestSpec.parse(data)


@pytest.fixture
def net(conn: VirtConnection, uid: str) -> str:
    name = f"n-{uid}"
    assert conn.ensure_network(NetworkSpec(name, subnet="10.77.0.0/24"))
    yield name  # type: ignore[misc]
    conn.delete_network(name)


def state_of(conn: VirtConnection, net: str | None = None) -> dict[str, Any]:
    """What a refused request must leave alone."""
    return {
        "guests": sorted(g["name"] for g in conn.list_guests()),
        "volumes": sorted(conn._pool(POOL).listVolumes()),
        "hosts": conn.network_info(net).hosts if net else None,
    }


def test_create_list_show_delete(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    name = f"g-{uid}"
    mac = "52:54:00:10:00:01"
    info = conn.create_guest(gspec(name, nics=[{"network": net, "mac": mac}]), hw_report)
    assert info["state"] == "running" and info["virt_type"] == "kvm" and info["managed"]
    assert info["nics"][0]["mac"] == mac and info["nics"][0]["model"] == "virtio"
    assert name in [g["name"] for g in conn.list_guests()]
    # the fixed MAC got a DHCP reservation outside the dynamic range
    hosts = conn.network_info(net).hosts
    assert hosts == [{"mac": mac, "name": name, "ip": "10.77.0.2"}]
    assert conn.volume_exists(POOL, f"{name}-disk0.qcow2")
    out = conn.delete_guest(name)
    assert out["reservations_released"] == [mac]
    assert out["volumes_deleted"] == [f"/default-pool/{name}-disk0.qcow2"]
    assert not conn.volume_exists(POOL, f"{name}-disk0.qcow2")
    assert conn.network_info(net).hosts == []
    with pytest.raises(NotFound):
        conn.guest_info(name)


def test_generated_mac_and_next_free_ip(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    a = conn.create_guest(gspec(f"a-{uid}", nics=[{"network": net, "ip": "10.77.0.2"}]), hw_report)
    b = conn.create_guest(gspec(f"b-{uid}", nics=[{"network": net}]), hw_report)
    assert a["nics"][0]["mac"].startswith("52:54:00:")
    ips = {h["name"]: h["ip"] for h in conn.network_info(net).hosts}
    assert ips == {f"a-{uid}": "10.77.0.2", f"b-{uid}": "10.77.0.3"}
    assert b["nics"][0]["mac"] != a["nics"][0]["mac"]


def test_dry_run_defines_nothing(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    before = state_of(conn, net)
    plan = conn.plan_guest(gspec(f"d-{uid}", nics=[{"network": net}]), hw_report)
    assert f"<name>d-{uid}</name>" in plan.xml
    assert plan.volumes[0]["path"] == f"/default-pool/d-{uid}-disk0.qcow2"
    assert plan.reservations[0]["ip"] == "10.77.0.2"
    assert state_of(conn, net) == before


def _refused(conn: VirtConnection, net: str, spec: GuestSpec, report: pf.VirtReport, exc: type[Exception],
             text: str) -> InvalidInput | Conflict:
    before = state_of(conn, net)
    with pytest.raises(exc) as err:
        conn.create_guest(spec, report)
    assert text in str(err.value)
    assert state_of(conn, net) == before, "a refused request changed libvirt state"
    return err.value  # type: ignore[return-value]


def test_kvm_refused_on_software_kvm(conn: VirtConnection, net: str, uid: str, sw_report: pf.VirtReport) -> None:
    err = _refused(conn, net, gspec(f"k-{uid}"), sw_report, VirtRefused, "virt_type kvm refused")
    assert err.details["verdict"] == pf.SOFTWARE_KVM_ONLY
    assert "ask for virt_type qemu explicitly" in err.message
    # ... and TCG works when asked for explicitly
    assert conn.create_guest(gspec(f"k-{uid}", virt_type="qemu"), sw_report)["virt_type"] == "qemu"


def test_nested_refused_without_nested(conn: VirtConnection, net: str, uid: str,
                                       no_nested_report: pf.VirtReport, hw_report: pf.VirtReport) -> None:
    _refused(conn, net, gspec(f"n-{uid}", nested=True), no_nested_report, VirtRefused, "nested virtualisation")
    info = conn.create_guest(gspec(f"n-{uid}", nested=True), hw_report)
    assert "name='vmx'" in conn.domain_xml(info["name"])


def test_memory_above_free_refused(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    free = conn.free_memory_mib()
    _refused(conn, net, gspec(f"m-{uid}", memory_mib=free + 1), hw_report, VirtRefused, "exceeds the host's free")


def test_unknown_pool_and_network(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    e = _refused(conn, net, gspec(f"p-{uid}", disks=[{"size_gib": 1, "pool": "nope"}]), hw_report, VirtRefused,
                 "unknown storage pool 'nope'")
    assert e.details["field"] == "disks[0].pool"
    e = _refused(conn, net, gspec(f"p-{uid}", nics=[{"network": net}, {"network": "nonet"}]), hw_report,
                 VirtRefused, "unknown network 'nonet'")
    assert e.details["field"] == "nics[1].network"
    _refused(conn, net, gspec(f"p-{uid}", disks=[{"size_gib": 1, "pool": POOL, "backing_image": "missing.qcow2"}]),
             hw_report, VirtRefused, "backing image 'missing.qcow2' not found")


def test_duplicates(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    mac = "52:54:00:10:00:99"
    conn.create_guest(gspec(f"x-{uid}", nics=[{"network": net, "mac": mac}]), hw_report)
    _refused(conn, net, gspec(f"x-{uid}"), hw_report, Conflict, "already exists")
    _refused(conn, net, gspec(f"y-{uid}", nics=[{"network": net, "mac": mac}]), hw_report, Conflict,
             f"MAC {mac} is already used by guest 'x-{uid}'")
    _refused(conn, net, gspec(f"y-{uid}", nics=[{"network": net, "ip": "10.77.0.2"}]), hw_report, Conflict,
             "10.77.0.2 is already reserved")
    _refused(conn, net, gspec(f"y-{uid}", nics=[{"network": net, "ip": "10.99.0.2"}]), hw_report, VirtRefused,
             "outside network")
    # a reservation left by someone else for a MAC no guest uses yet
    conn.reserve(net, "52:54:00:10:00:aa", "other", "10.77.0.50")
    _refused(conn, net, gspec(f"y-{uid}", nics=[{"network": net, "mac": "52:54:00:10:00:aa"}]), hw_report, Conflict,
             "already has a reservation")


def test_reservation_kept_and_reused(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    name, mac = f"k-{uid}", "52:54:00:10:00:77"
    conn.create_guest(gspec(name, nics=[{"network": net, "mac": mac}]), hw_report)
    assert conn.delete_guest(name, release=False)["reservations_released"] == []
    hosts = conn.network_info(net).hosts
    plan = conn.plan_guest(gspec(name, nics=[{"network": net, "mac": mac}]), hw_report)
    assert plan.reservations == [] and plan.kept_reservations == [{"network": net, "mac": mac, "name": name,
                                                                    "ip": "10.77.0.2"}]
    conn.create_guest(gspec(name, nics=[{"network": net, "mac": mac}]), hw_report)
    assert conn.network_info(net).hosts == hosts
    # another guest may not take that MAC, nor this guest another address
    conn.delete_guest(name, release=False)
    with pytest.raises(Conflict, match="already has a reservation"):
        conn.plan_guest(gspec(f"o-{uid}", nics=[{"network": net, "mac": mac}]), hw_report)
    with pytest.raises(Conflict, match="already has a reservation"):
        conn.plan_guest(gspec(name, nics=[{"network": net, "mac": mac, "ip": "10.77.0.9"}]), hw_report)
    assert conn.release(net, mac)


def test_failure_rolls_back(conn: VirtConnection, net: str, uid: str, hw_report: pf.VirtReport) -> None:
    """A seed ISO upload the test driver cannot do: volumes and reservations made before it are removed."""
    before = state_of(conn, net)
    with pytest.raises(VirtError, match="virStorageVolUpload"):
        conn.create_guest(gspec(f"r-{uid}", nics=[{"network": net}], seed={"user_data": "#cloud-config\n"}),
                          hw_report)
    assert state_of(conn, net) == before


def test_auto_network_and_pool(conn: VirtConnection, uid: str, hw_report: pf.VirtReport, tmp_path) -> None:  # type: ignore[no-untyped-def]
    netname, pool = f"auto-{uid}", f"pool-{uid}"
    nets = {netname: NetworkSpec(netname, subnet="10.88.0.0/24")}
    spec = gspec(f"a-{uid}", disks=[{"size_gib": 1, "pool": pool}], nics=[{"network": netname}])
    plan = conn.plan_guest(spec, hw_report, auto_networks=nets, auto_pools={pool: str(tmp_path)})
    assert plan.to_dict()["create_networks"] == [netname] and plan.to_dict()["create_pools"] == [pool]
    assert netname not in conn.network_names()
    conn.create_guest(spec, hw_report, auto_networks=nets, auto_pools={pool: str(tmp_path)})
    try:
        assert netname in conn.network_names() and pool in conn.pool_names()
        assert conn.network_info(netname).hosts[0]["ip"] == "10.88.0.2"
    finally:
        conn.delete_guest(f"a-{uid}")
        conn.delete_network(netname)
        conn.delete_pool(pool)


def test_lifecycle_and_boot_order(conn: VirtConnection, uid: str, hw_report: pf.VirtReport) -> None:
    name = f"l-{uid}"
    conn.create_guest(gspec(name, boot=["hd"]), hw_report, start=False)
    assert conn.state(name) == "shutoff"
    conn.start(name)
    assert conn.state(name) == "running"
    conn.reboot(name)
    conn.reset(name)
    assert conn.shutdown(name, timeout=2) in ("shutdown", "destroyed")
    assert conn.state(name) == "shutoff"
    assert conn.shutdown(name) == "already-off"
    conn.set_boot_order(name, ["network", "hd"])
    assert conn.boot_order(name) == ["network", "hd"]
    assert "<prov:guest" in conn.domain_xml(name, inactive=True) or "guest" in conn.domain_xml(name, inactive=True)
    assert conn.guest_info(name)["managed"] is True


def test_console_tail_reads_the_log(conn: VirtConnection, uid: str, hw_report: pf.VirtReport, tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "c.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    conn.create_guest(gspec(f"c-{uid}", console_log=str(log)), hw_report)
    assert conn.console_tail(f"c-{uid}", 3) == ["line 97", "line 98", "line 99"]


def test_not_found_and_connection_errors(conn: VirtConnection) -> None:
    with pytest.raises(NotFound, match="guest 'nope' not found"):
        conn.start("nope")
    with pytest.raises(NotFound, match="network"):
        conn.network_info("nope")
    with pytest.raises(VirtError, match="connect"):
        open_connection("qemu+unix:///system?socket=/nonexistent/sock")


def test_domain_capabilities_of_test_driver(conn: VirtConnection) -> None:
    caps = conn.domain_capabilities()
    assert caps["domain_types"] == ["test"]
    assert conn.version().count(".") == 2


def test_ssh_target() -> None:
    assert ssh_target("qemu+ssh://root@kvm1:2222/system") == ("root@kvm1", ["-p", "2222"])
    assert ssh_target("qemu+ssh://kvm1/system") == ("kvm1", [])
    assert ssh_target("qemu:///system") is None
    assert ssh_target("qemu+ssh://root@h/system?keyfile=/k&no_verify=1") == (
        "root@h", ["-i", "/k", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
