"""Typed guest specification (what a KVM guest looks like), validated before libvirt sees it.

The spec is pure data: no libvirt, no I/O except ``validate_paths()`` which checks
files on the machine that renders the XML (firmware, kernel). The libvirt driver
turns a spec plus resolved volume paths into domain XML through
``templates/libvirt/domain.xml.j2``. ``NetworkSpec`` (a network made on demand)
and ``GuestPlan`` (the result of every check: what a create would make) are
data too, shared by every ``VirtInterface`` implementation (drivers/virt/base.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provisioner.errors import InvalidInput, VirtRefused

# Debian's ovmf package: 4 MiB flash images (the 2 MiB ones are legacy). Pair CODE with the matching VARS.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# libvirt domain names: we keep them DNS-label-like so they can double as hostnames.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_VOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")

CpuMode = Literal["host-passthrough", "host-model", "maximum"]
VirtType = Literal["kvm", "qemu"]
BootDev = Literal["hd", "network", "cdrom"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def normalise_mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise ValueError(f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(mac[:2], 16) & 1:
        # IEEE 802: the I/G bit set means a multicast address, which no NIC may use.
        raise ValueError(f"{value!r} is a multicast MAC address")
    return mac


class DiskSpec(_Strict):
    size_gib: float = Field(gt=0, le=65536, description="virtual size in GiB")
    bus: Literal["virtio-blk", "virtio-scsi"] = "virtio-blk"
    pool: str | None = Field(default=None, description="storage pool (default: the host's default pool)")
    backing_image: str | None = Field(
        default=None, description="a volume name in the same pool or an absolute path (qcow2 backing file)",
    )
    backing_format: Literal["qcow2", "raw"] = "qcow2"

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str | None) -> str | None:
        if v is not None and not _VOL_RE.match(v):
            raise ValueError(f"{v!r} is not a valid pool name")
        return v


class NicSpec(_Strict):
    # Neither network nor bridge: the host's default network (the controller's settings.virt_network).
    network: str | None = None
    bridge: str | None = None
    mac: str | None = None
    model: Literal["virtio"] = "virtio"
    ip: str | None = Field(default=None, description="DHCP reservation for this MAC (NAT networks)")

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else normalise_mac(v)

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.IPv4Address(v)
            except ValueError as exc:
                raise ValueError(f"{v!r} is not an IPv4 address ({exc})") from None
        return v

    @model_validator(mode="after")
    def _one_source(self) -> NicSpec:
        if self.network is not None and self.bridge is not None:
            raise ValueError("give one of network or bridge, not both")
        if self.bridge is not None and self.ip is not None:
            raise ValueError("a DHCP reservation (ip) needs a libvirt network, not a bridge")
        return self


class SeedSpec(_Strict):
    """cloud-init NoCloud seed (an ISO labelled 'cidata')."""

    user_data: str = "#cloud-config\n{}\n"
    meta_data: dict[str, Any] = Field(default_factory=dict)
    network_config: str | None = None


class DirectBoot(_Strict):
    kernel: str
    initrd: str | None = None
    cmdline: str = ""


class GuestSpec(_Strict):
    name: str
    vcpus: int = Field(default=1, ge=1, le=256)
    memory_mib: int = Field(default=512, ge=32, le=4 * 1024 * 1024)
    virt_type: VirtType = "kvm"
    cpu_mode: CpuMode | None = None  # None: host-model for kvm, maximum for qemu
    nested: bool = False
    machine: Literal["q35", "pc"] = "q35"
    firmware: Literal["bios", "uefi"] = "bios"
    disks: list[DiskSpec] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    rng: bool = True
    memballoon: bool = True
    balloon_stats_period: int = Field(default=5, ge=0, le=3600)
    console_log: str | None = None  # default chosen by the driver
    boot: list[BootDev] = Field(default_factory=lambda: list[BootDev](["hd"]))
    seed: SeedSpec | None = None
    direct_boot: DirectBoot | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r}: letters, digits, '-', '_', '.' only, 1-63 characters")
        return v

    @field_validator("boot")
    @classmethod
    def _boot(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("boot devices must not repeat")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> GuestSpec:
        if self.cpu_mode is None:
            self.cpu_mode = "host-model" if self.virt_type == "kvm" else "maximum"
        if self.virt_type == "qemu" and self.cpu_mode == "host-passthrough":
            raise ValueError("cpu_mode host-passthrough needs virt_type kvm (TCG cannot pass the host CPU through)")
        if self.nested and self.virt_type != "kvm":
            raise ValueError("nested virtualisation needs virt_type kvm")
        if self.nested and self.cpu_mode == "maximum":
            raise ValueError("nested virtualisation needs cpu_mode host-passthrough or host-model")
        macs = [n.mac for n in self.nics if n.mac]
        if len(set(macs)) != len(macs):
            raise ValueError("two NICs share a MAC address")
        if self.console_log is not None and not self.console_log.startswith("/"):
            raise ValueError("console_log must be an absolute path")
        if "network" in self.boot and not self.nics:
            raise ValueError("boot from network needs a NIC")
        if "cdrom" in self.boot and self.seed is None:
            raise ValueError("boot from cdrom needs a seed ISO")
        return self

    # ------------------------------------------------------------------ helpers
    @classmethod
    def parse(cls, data: dict[str, Any]) -> GuestSpec:
        """Validate ``data``; errors become InvalidInput naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_from(exc) from None

    def validate_paths(self) -> None:
        """Files that must exist on the rendering machine (local URIs only)."""
        if self.firmware == "uefi":
            for p in (OVMF_CODE, OVMF_VARS):
                if not p.is_file():
                    raise InvalidInput(field="firmware", reason=f"{p} missing (install the ovmf package)")
        if self.direct_boot is not None:
            for fld in ("kernel", "initrd"):
                path = getattr(self.direct_boot, fld)
                if path is not None and not Path(path).is_file():
                    raise InvalidInput(field=f"direct_boot.{fld}", reason=f"{path}: no such file")


def invalid_from(exc: ValidationError) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "spec"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return InvalidInput(field=loc, reason=msg)


# --------------------------------------------------------------------------- networks and plans


@dataclass(frozen=True)
class NetworkSpec:
    """A libvirt network created on demand. NAT: own bridge + dnsmasq; bridge: an existing host bridge."""

    name: str
    mode: str = "nat"  # nat | bridge
    subnet: str = "192.168.212.0/24"
    bridge: str | None = None  # nat: bridge name to create (default virbr-<hash>); bridge: existing bridge
    lease_minutes: int = 60

    def context(self) -> dict[str, Any]:
        if self.mode == "bridge":
            if not self.bridge:
                raise VirtRefused(reason=f"network {self.name}: a bridged network needs a bridge name")
            return {"name": self.name, "mode": "bridge", "bridge": self.bridge}
        net = ipaddress.IPv4Network(self.subnet)
        hosts = list(net.hosts())
        if len(hosts) < 8:
            raise VirtRefused(reason=f"network {self.name}: subnet {net} too small")
        half = len(hosts) // 2
        # Dynamic range in the upper half; reservations are taken from the lower half (see reserve()).
        # Linux limits interface names to 15 characters (IFNAMSIZ 16 incl. NUL).
        bridge = self.bridge or f"virbr-{abs(hash(self.name)) % 10**8:08d}"[:15]
        return {
            "name": self.name,
            "mode": "nat",
            "bridge": bridge,
            "gateway": str(hosts[0]),
            "netmask": str(net.netmask),
            "dhcp_start": str(hosts[half]),
            "dhcp_end": str(hosts[-1]),
            "lease_minutes": self.lease_minutes,
            "hosts": [],
        }


@dataclass
class GuestPlan:
    """What create_guest would do: the output of a dry run."""

    spec: GuestSpec
    xml: str
    volumes: list[dict[str, Any]]
    reservations: list[dict[str, str]]
    seed_volume: dict[str, Any] | None
    warnings: list[str]
    make_networks: list[NetworkSpec] = field(default_factory=list)
    make_pools: dict[str, str] = field(default_factory=dict)
    kept_reservations: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "xml": self.xml,
            "volumes": self.volumes,
            "reservations": self.reservations,
            "seed_volume": self.seed_volume,
            "warnings": self.warnings,
            "create_networks": [n.name for n in self.make_networks],
            "create_pools": sorted(self.make_pools),
            "kept_reservations": self.kept_reservations,
        }
