"""GuestSpec validation: clear errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.drivers.virt.spec import GuestSpec, normalise_mac
from provisioner.errors import InvalidInput


def spec(**kw: Any) -> dict[str, Any]:
    return {"name": "g1", "memory_mib": 256, **kw}


def test_defaults() -> None:
    s = GuestSpec.parse(spec())
    assert s.virt_type == "kvm" and s.cpu_mode == "host-model"
    assert GuestSpec.parse(spec(virt_type="qemu")).cpu_mode == "maximum"
    assert s.rng and s.memballoon and s.boot == ["hd"]


def test_mac_is_normalised() -> None:
    s = GuestSpec.parse(spec(nics=[{"network": "n", "mac": "52-54-00-AA-BB-CC"}]))
    assert s.nics[0].mac == "52:54:00:aa:bb:cc"
    assert normalise_mac(" 52:54:00:AA:BB:CC ") == "52:54:00:aa:bb:cc"


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        (spec(name="bad name"), "name", "letters, digits"),
        (spec(name=""), "name", "letters"),
        (spec(memory_mib=0), "memory_mib", "greater than or equal"),
        (spec(vcpus=0), "vcpus", "greater than or equal"),
        (spec(virt_type="xen"), "virt_type", "'kvm' or 'qemu'"),
        (spec(cpu_mode="host-passthrough", virt_type="qemu"), "spec", "host-passthrough needs virt_type kvm"),
        (spec(nested=True, virt_type="qemu"), "spec", "nested virtualisation needs virt_type kvm"),
        (spec(nested=True, cpu_mode="maximum"), "spec", "host-passthrough or host-model"),
        (spec(nics=[{"network": "n", "mac": "zz:54:00:aa:bb:cc"}]), "nics.0.mac", "not a MAC"),
        (spec(nics=[{"network": "n", "mac": "01:00:5e:00:00:01"}]), "nics.0.mac", "multicast"),
        (spec(nics=[{"network": "n", "bridge": "br0"}]), "nics.0", "not both"),
        (spec(nics=[{"bridge": "br0", "ip": "10.0.0.5"}]), "nics.0", "needs a libvirt network"),
        (spec(nics=[{"network": "n", "ip": "10.0.0.500"}]), "nics.0.ip", "IPv4"),
        (spec(nics=[{"network": "n", "mac": "52:54:00:00:00:01"}, {"network": "m", "mac": "52:54:00:00:00:01"}]),
         "spec", "share a MAC"),
        (spec(disks=[{"size_gib": 0}]), "disks.0.size_gib", "greater than"),
        (spec(disks=[{"size_gib": 1, "bus": "ide"}]), "disks.0.bus", "virtio-blk"),
        (spec(disks=[{"size_gib": 1, "pool": "../etc"}]), "disks.0.pool", "not a valid pool"),
        (spec(boot=["hd", "hd"]), "boot", "must not repeat"),
        (spec(boot=["network"]), "spec", "needs a NIC"),
        (spec(boot=["floppy"]), "boot.0", "'hd', 'network' or 'cdrom'"),
        (spec(console_log="relative.log"), "spec", "absolute path"),
        (spec(firmware="coreboot"), "firmware", "'bios' or 'uefi'"),
        (spec(unknown=1), "unknown", "Extra inputs"),
    ],
)
def test_bad_input(data: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        GuestSpec.parse(data)
    assert exc.value.details["field"] == field, exc.value.message
    assert text in exc.value.message


def test_validate_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = GuestSpec.parse(spec(direct_boot={"kernel": str(tmp_path / "nope")}))
    with pytest.raises(InvalidInput, match="no such file"):
        s.validate_paths()
    (tmp_path / "k").write_bytes(b"x")
    GuestSpec.parse(spec(direct_boot={"kernel": str(tmp_path / "k")})).validate_paths()
