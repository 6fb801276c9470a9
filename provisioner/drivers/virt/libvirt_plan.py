"""libvirt adapter: a guest's plan — every check before anything is made, and the domain XML.

``plan_guest`` has no side effect: it asks the host (pre-flight verdict, nested, free
memory), looks for a duplicate name/MAC/volume or an unknown pool/network/backing
image, allocates MACs and reserved addresses, and renders ``libvirt/domain.xml.j2``
from ``domain_context``. ``libvirt_guests.py`` carries the plan out.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from typing import Any

import libvirt

from provisioner.drivers.virt.libvirt_host import parse_xml, translate
from provisioner.drivers.virt.libvirt_networks import LibvirtNetworks, parse_network
from provisioner.drivers.virt.libvirt_storage import LibvirtStorage
from provisioner.drivers.virt.preflight import VirtReport
from provisioner.drivers.virt.spec import OVMF_CODE, OVMF_VARS, GuestPlan, GuestSpec, NetworkSpec, NicSpec
from provisioner.errors import Conflict, VirtRefused
from provisioner.render import render

NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
# QEMU's locally administered OUI (52:54:00); libvirt uses it for generated MACs too.
_MAC_PREFIX = "52:54:00"
_GIB = 1024**3


def _disk_target(bus: str, index: int) -> str:
    letter = "abcdefghijklmnopqrstuvwxyz"[index]
    return ("vd" if bus == "virtio" else "sd") + letter


class LibvirtPlanner(LibvirtStorage, LibvirtNetworks):
    """Checks and the plan for a new guest (storage and networks are read, never changed)."""

    def _all_macs(self) -> dict[str, str]:
        """MAC -> domain name for every defined domain."""
        out: dict[str, str] = {}
        with translate("list domains"):
            for dom in self._conn.listAllDomains(0):
                for mac in parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).findall(
                    "devices/interface/mac",
                ):
                    out[mac.get("address", "").lower()] = dom.name()
        return out

    def _exists(self, name: str) -> bool:
        try:
            self._conn.lookupByName(name)
            return True
        except libvirt.libvirtError:
            return False

    def plan_guest(self, spec: GuestSpec, report: VirtReport | None = None, *,
                   auto_networks: dict[str, NetworkSpec] | None = None,
                   auto_pools: dict[str, str] | None = None) -> GuestPlan:
        """Every check, no side effect. Raises VirtRefused/Conflict/InvalidInput with the reason.

        ``auto_networks``/``auto_pools`` (name -> spec/directory) are created on demand by
        ``create_guest`` when a NIC or disk names them and they do not exist yet.
        """
        warnings: list[str] = []
        auto_networks = auto_networks or {}
        auto_pools = auto_pools or {}
        make_networks: list[NetworkSpec] = []
        make_pools: dict[str, str] = {}
        # 1. what the host can do
        if report is None:
            report = self.preflight()
        if spec.virt_type == "kvm" and not report.kvm_allowed:
            raise VirtRefused(
                reason=f"virt_type kvm refused: host verdict is {report.overall} ({report.summary}); "
                "ask for virt_type qemu explicitly to run the guest under emulation",
                field="virt_type", verdict=report.overall,
            )
        if spec.nested and not report.nested_allowed:
            raise VirtRefused(
                reason=f"nested virtualisation requested but the host has none (verdict {report.overall})",
                field="nested", verdict=report.overall,
            )
        domcaps = report.libvirt or {}
        offered = domcaps.get("domain_types")
        if offered and spec.virt_type not in offered and not self.is_test:
            raise VirtRefused(reason=f"libvirt on this host does not offer domain type {spec.virt_type}",
                              field="virt_type")
        # 2. inputs that live on this machine
        if self.is_local and not self.is_test:
            spec.validate_paths()
        # 3. name and memory
        if self._exists(spec.name):
            raise Conflict(reason=f"a guest named {spec.name!r} already exists")
        free = self.free_memory_mib()
        if spec.memory_mib > free:
            raise VirtRefused(
                reason=f"memory {spec.memory_mib} MiB exceeds the host's free memory ({free} MiB)",
                field="memory_mib",
            )
        # 4. pools, volumes, backing images
        pools = self.pool_names()
        volumes: list[dict[str, Any]] = []
        spec = spec.model_copy(update={"disks": [d if d.pool else d.model_copy(update={"pool": self.default_pool})
                                                 for d in spec.disks]})
        for i, disk in enumerate(spec.disks):
            assert disk.pool is not None
            if disk.pool not in pools and disk.pool in auto_pools:
                make_pools[disk.pool] = auto_pools[disk.pool]
            elif disk.pool not in pools:
                raise VirtRefused(reason=f"unknown storage pool {disk.pool!r} (known: {', '.join(pools) or 'none'})",
                                  field=f"disks[{i}].pool")
            vol_name = f"{spec.name}-disk{i}.qcow2"
            if disk.pool in make_pools:
                if disk.backing_image:
                    raise VirtRefused(reason=f"backing image {disk.backing_image!r}: pool {disk.pool!r} is empty",
                                      field=f"disks[{i}].backing_image")
                volumes.append({"pool": disk.pool, "name": vol_name, "size_bytes": int(disk.size_gib * _GIB),
                                "path": f"{make_pools[disk.pool].rstrip('/')}/{vol_name}", "backing_path": None,
                                "backing_format": disk.backing_format,
                                "bus": "virtio" if disk.bus == "virtio-blk" else "scsi"})
                continue
            if self.volume_exists(disk.pool, vol_name):
                raise Conflict(reason=f"volume {disk.pool}/{vol_name} already exists")
            backing_path = None
            if disk.backing_image:
                backing_path = self._backing_path(disk.pool, disk.backing_image)
                if backing_path is None:
                    raise VirtRefused(reason=f"backing image {disk.backing_image!r} not found in pool {disk.pool!r}",
                                      field=f"disks[{i}].backing_image")
            bus = "virtio" if disk.bus == "virtio-blk" else "scsi"
            volumes.append({
                "pool": disk.pool, "name": vol_name, "size_bytes": int(disk.size_gib * _GIB),
                "path": f"{self._pool_path(disk.pool).rstrip('/')}/{vol_name}",
                "backing_path": backing_path, "backing_format": disk.backing_format, "bus": bus,
            })
        seed_volume = None
        if spec.seed is not None:
            seed_pool = spec.disks[0].pool if spec.disks and spec.disks[0].pool else self.default_pool
            seed_name = f"{spec.name}-seed.iso"
            if seed_pool in make_pools:
                seed_dir = make_pools[seed_pool]
            elif seed_pool in pools:
                if self.volume_exists(seed_pool, seed_name):
                    raise Conflict(reason=f"volume {seed_pool}/{seed_name} already exists")
                seed_dir = self._pool_path(seed_pool)
            else:
                raise VirtRefused(reason=f"unknown storage pool {seed_pool!r} for the seed ISO", field="seed")
            seed_volume = {"pool": seed_pool, "name": seed_name, "path": f"{seed_dir.rstrip('/')}/{seed_name}"}
        # 5. networks and MACs
        networks = self.network_names()
        used_macs = self._all_macs()
        reservations: list[dict[str, str]] = []
        kept: list[dict[str, str]] = []
        nics: list[NicSpec] = []
        taken_ips: dict[str, set[str]] = {}
        for i, nic in enumerate(spec.nics):
            if nic.network is None and nic.bridge is None:
                nic = nic.model_copy(update={"network": self.default_network})
            mac = nic.mac or self._new_mac(set(used_macs))
            if mac in used_macs:
                raise Conflict(reason=f"MAC {mac} is already used by guest {used_macs[mac]!r}", field=f"nics[{i}].mac")
            used_macs[mac] = spec.name
            if nic.network is not None:
                if nic.network not in networks and nic.network in auto_networks:
                    net_spec = auto_networks[nic.network]
                    if net_spec not in make_networks:
                        make_networks.append(net_spec)
                    info = parse_network(render("libvirt/network.xml.j2", net_spec.context()))
                elif nic.network not in networks:
                    known = ", ".join(networks) or "none"
                    raise VirtRefused(reason=f"unknown network {nic.network!r} (known: {known})",
                                      field=f"nics[{i}].network")
                else:
                    info = self.network_info(nic.network)
                existing = next((h for h in info.hosts if h.get("mac", "").lower() == mac), None)
                if existing is not None:
                    # A reservation for this MAC and this guest name (kept from an earlier life of the
                    # guest, or written with the network) is reused as is: no network update needed.
                    if existing.get("name") != spec.name or (nic.ip is not None and existing.get("ip") != nic.ip):
                        raise Conflict(reason=f"MAC {mac} already has a reservation on network {nic.network} "
                                              f"({existing.get('name')} {existing.get('ip')})", field=f"nics[{i}].mac")
                    kept.append({"network": nic.network, "mac": mac, "name": spec.name, "ip": existing.get("ip", "")})
                elif info.subnet is not None:
                    taken = taken_ips.setdefault(nic.network, set())
                    if nic.ip is not None:
                        if ipaddress.IPv4Address(nic.ip) not in info.subnet:
                            raise VirtRefused(reason=f"{nic.ip} is outside network {nic.network} ({info.subnet})",
                                              field=f"nics[{i}].ip")
                        if nic.ip in {h.get("ip") for h in info.hosts} | taken:
                            raise Conflict(reason=f"{nic.ip} is already reserved on network {nic.network}",
                                           field=f"nics[{i}].ip")
                        ip = nic.ip
                    else:
                        ip = self._free_ip(info, taken)
                    taken.add(ip)
                    reservations.append({"network": nic.network, "mac": mac, "name": spec.name, "ip": ip})
            nics.append(nic.model_copy(update={"mac": mac}))
        spec = spec.model_copy(update={"nics": nics})
        if spec.console_log is None:
            spec = spec.model_copy(update={"console_log": f"{self.console_dir.rstrip('/')}/{spec.name}-serial.log"})
        warnings.extend(report.warnings if spec.virt_type == "kvm" else [])
        xml = render("libvirt/domain.xml.j2", self.domain_context(spec, volumes, seed_volume, report))
        return GuestPlan(spec, xml, volumes, reservations, seed_volume, warnings, make_networks, make_pools, kept)

    @staticmethod
    def _new_mac(used: set[str]) -> str:
        while True:
            mac = _MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(3))
            if mac not in used:
                return mac

    @staticmethod
    def domain_context(spec: GuestSpec, volumes: list[dict[str, Any]], seed_volume: dict[str, Any] | None,
                       report: VirtReport | None) -> dict[str, Any]:
        disks = []
        counters = {"virtio": 0, "scsi": 0}
        for v in volumes:
            disks.append({"path": v["path"], "bus": v["bus"], "format": "qcow2",
                          "target": _disk_target(v["bus"], counters[v["bus"]])})
            counters[v["bus"]] += 1
        seed = None
        if seed_volume is not None:
            if spec.machine == "q35":
                seed = {"path": seed_volume["path"], "bus": "sata", "target": _disk_target("sata", counters["scsi"])}
            else:
                seed = {"path": seed_volume["path"], "bus": "ide", "target": "hdc"}
        nics = [{"type": "network" if n.network else "bridge", "source": n.network or n.bridge,
                 "mac": n.mac, "model": n.model} for n in spec.nics]
        vendor = report.cpu_vendor if report else ""
        db = spec.direct_boot
        return {
            "name": spec.name,
            "spec_json": json.dumps(spec.model_dump(mode="json"), sort_keys=True),
            "virt_type": spec.virt_type,
            "memory_mib": spec.memory_mib,
            "vcpus": spec.vcpus,
            "machine": spec.machine,
            "uefi": spec.firmware == "uefi",
            "ovmf_code": str(OVMF_CODE),
            "ovmf_vars": str(OVMF_VARS),
            "nvram": f"{NVRAM_DIR}/{spec.name}_VARS.fd",
            "kernel": db.kernel if db else None,
            "initrd": db.initrd if db else None,
            "cmdline": db.cmdline if db else "",
            "boot": [] if db else spec.boot,
            "cpu_mode": spec.cpu_mode,
            "nested_feature": ("svm" if vendor == "amd" else "vmx") if spec.nested else None,
            "scsi": counters["scsi"] > 0,
            "disks": disks,
            "seed_iso": seed,
            "nics": nics,
            "console_log": spec.console_log,
            "rng": spec.rng,
            "memballoon": spec.memballoon,
            "balloon_stats_period": spec.balloon_stats_period,
        }
