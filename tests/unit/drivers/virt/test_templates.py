"""Rendered libvirt XML: golden files (PROV_UPDATE_GOLDEN=1 / --update-golden rewrites) + virt-xml-validate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.libvirt import VirtConnection
from provisioner.drivers.virt.spec import GuestSpec, NetworkSpec
from provisioner.render import render
from tests.support.helpers import assert_golden
from tests.unit.drivers.virt.conftest import tree_report, virt_xml_validate

POOL = "/var/lib/libvirt/images/prov"


def vols(spec: GuestSpec) -> list[dict[str, Any]]:
    return [{"path": f"{POOL}/{spec.name}-disk{i}.qcow2", "bus": "virtio" if d.bus == "virtio-blk" else "scsi"}
            for i, d in enumerate(spec.disks)]


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "bios-virtio-blk": ({
        "name": "web01", "vcpus": 2, "memory_mib": 1024, "virt_type": "kvm", "cpu_mode": "host-passthrough",
        "disks": [{"size_gib": 10}], "nics": [{"network": "prov-nat", "mac": "52:54:00:12:34:56"}],
        "console_log": "/var/log/libvirt/qemu/web01-serial.log", "boot": ["network", "hd"],
    }, "intel_ept_nested"),
    "uefi-virtio-scsi-seed": ({
        "name": "db01", "vcpus": 4, "memory_mib": 4096, "virt_type": "kvm", "firmware": "uefi",
        "disks": [{"size_gib": 20, "bus": "virtio-scsi"}, {"size_gib": 50, "bus": "virtio-scsi"}],
        "nics": [{"bridge": "br0", "mac": "52:54:00:00:00:0a"}, {"network": "prov-nat", "mac": "52:54:00:00:00:0b"}],
        "seed": {"user_data": "#cloud-config\nhostname: db01\n"}, "boot": ["hd", "cdrom"],
        "console_log": "/var/log/libvirt/qemu/db01-serial.log", "balloon_stats_period": 10,
    }, "intel_ept_nested"),
    "tcg-direct-boot": ({
        "name": "t1", "memory_mib": 192, "virt_type": "qemu", "disks": [{"size_gib": 0.1}],
        "nics": [{"network": "prov-nat", "mac": "52:54:00:aa:00:01"}], "console_log": "/tmp/t1.log",
        "direct_boot": {"kernel": "/cache/vmlinux", "initrd": "/cache/initrd.img",
                        "cmdline": "console=ttyS0 prov.selftest=1 quote=\"<&>'\""},
    }, "software_kvm_pvm"),
    "nested-amd-no-rng-no-balloon": ({
        "name": "hv1", "memory_mib": 2048, "virt_type": "kvm", "nested": True, "rng": False, "memballoon": False,
        "machine": "pc", "seed": {"meta_data": {"foo": "bar"}}, "console_log": "/var/log/hv1.log",
    }, "amd_npt_no_nested"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_xml(case: str, tmp_path: Path) -> None:
    data, tree = CASES[case]
    spec = GuestSpec.parse(data)
    report = tree_report(tree)
    seed = {"path": f"{POOL}/{spec.name}-seed.iso"} if spec.seed else None
    xml = render("libvirt/domain.xml.j2", VirtConnection.domain_context(spec, vols(spec), seed, report))
    assert_golden(f"libvirt/domain-{case}.xml", xml)
    virt_xml_validate(xml, "domain", tmp_path)


def test_domain_values_are_escaped() -> None:
    spec = GuestSpec.parse(CASES["tcg-direct-boot"][0])
    xml = render("libvirt/domain.xml.j2", VirtConnection.domain_context(spec, vols(spec), None, None))
    assert "quote=&#34;&lt;&amp;&gt;&#39;&#34;" in xml


def test_nested_feature_follows_vendor() -> None:
    spec = GuestSpec.parse({"name": "n", "nested": True})
    ctx = VirtConnection.domain_context
    intel = render("libvirt/domain.xml.j2", ctx(spec, [], None, tree_report("intel_ept_nested")))
    amd = render("libvirt/domain.xml.j2", ctx(spec, [], None, tree_report("amd_npt_no_nested")))
    assert "name='vmx'" in intel and "name='svm'" in amd


@pytest.mark.parametrize(
    ("case", "net"),
    [
        ("nat", NetworkSpec("prov-nat", subnet="192.168.212.0/24", bridge="virbr-prov0", lease_minutes=30)),
        ("bridge", NetworkSpec("lan", mode="bridge", bridge="br0")),
    ],
)
def test_network_xml(case: str, net: NetworkSpec, tmp_path: Path) -> None:
    ctx = net.context()
    if case == "nat":
        ctx["hosts"] = [{"mac": "52:54:00:12:34:56", "name": "web01", "ip": "192.168.212.2"}]
    xml = render("libvirt/network.xml.j2", ctx)
    assert_golden(f"libvirt/network-{case}.xml", xml)
    virt_xml_validate(xml, "network", tmp_path)


def test_nat_network_layout() -> None:
    ctx = NetworkSpec("n", subnet="10.1.0.0/24").context()
    assert ctx["gateway"] == "10.1.0.1"
    assert (ctx["dhcp_start"], ctx["dhcp_end"]) == ("10.1.0.128", "10.1.0.254")
    assert len(ctx["bridge"]) <= 15  # IFNAMSIZ


def test_pool_and_volume_xml(tmp_path: Path) -> None:
    pool = render("libvirt/pool.xml.j2", {"name": "prov", "path": POOL})
    assert_golden("libvirt/pool-dir.xml", pool)
    virt_xml_validate(pool, "storagepool", tmp_path)
    vol = render("libvirt/volume.xml.j2", {"name": "web01-disk0.qcow2", "capacity": 10 * 1024**3, "format": "qcow2",
                                            "backing_path": f"{POOL}/debian-12.qcow2", "backing_format": "qcow2"})
    assert_golden("libvirt/volume-backing.xml", vol)
    virt_xml_validate(vol, "storagevol", tmp_path)
    plain = render("libvirt/volume.xml.j2", {"name": "v.raw", "capacity": 1, "format": "raw",
                                              "backing_path": None, "backing_format": "qcow2"})
    virt_xml_validate(plain, "storagevol", tmp_path)
    assert "backingStore" not in plain


def test_dhcp_host_xml() -> None:
    xml = render("libvirt/dhcp_host.xml.j2", {"mac": "52:54:00:00:00:01", "name": "a'b", "ip": "10.0.0.2"})
    assert xml.strip() == "<host mac='52:54:00:00:00:01' name='a&#39;b' ip='10.0.0.2'/>"


def test_software_report_is_used(tmp_path: Path) -> None:
    assert tree_report("software_kvm_pvm").overall == pf.SOFTWARE_KVM_ONLY
