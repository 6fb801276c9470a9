"""libvirt adapter: creating a guest from its plan (with rollback) and deleting one with what it owns."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt

from provisioner.drivers.virt.base import STEP_DEFINE, STEP_NETWORKS, STEP_SEED, STEP_START, STEP_VOLUMES, StepFn
from provisioner.drivers.virt.libvirt_domains import LibvirtDomains
from provisioner.drivers.virt.libvirt_host import parse_xml, translate
from provisioner.drivers.virt.libvirt_plan import LibvirtPlanner
from provisioner.drivers.virt.libvirt_storage import build_seed_iso
from provisioner.drivers.virt.preflight import VirtReport
from provisioner.drivers.virt.spec import GuestSpec, NetworkSpec
from provisioner.errors import ProvError


class LibvirtGuests(LibvirtPlanner, LibvirtDomains):
    """create_guest and delete_guest: the steps that change storage, networks and domains together."""

    def create_guest(self, spec: GuestSpec, report: VirtReport | None = None, *, start: bool = True,
                     auto_networks: dict[str, NetworkSpec] | None = None,
                     auto_pools: dict[str, str] | None = None, on_step: StepFn | None = None) -> dict[str, Any]:
        plan = self.plan_guest(spec, report, auto_networks=auto_networks, auto_pools=auto_pools)
        step = on_step or (lambda _name: None)
        made_volumes: list[str] = []
        made_reservations: list[tuple[str, str]] = []
        defined = False
        # Networks and pools made on demand are shared infrastructure: they stay even if this guest fails.
        step(STEP_NETWORKS)
        for net_spec in plan.make_networks:
            self.ensure_network(net_spec)
        for pool_name, pool_dir in plan.make_pools.items():
            self.ensure_dir_pool(pool_name, pool_dir)
        def reserve_all() -> None:
            for r in plan.reservations:
                self.reserve(r["network"], r["mac"], r["name"], r["ip"])
                made_reservations.append((r["network"], r["mac"]))

        # A DHCP reservation makes libvirt restart the network's dnsmasq (~0.5 s): do it while the
        # volumes are made and the domain is defined, and wait for it before the guest starts so
        # its first DHCP request always meets the reservation.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prov-reserve")
        reserving = pool.submit(reserve_all)
        try:
            step(STEP_VOLUMES)
            for v in plan.volumes:
                made_volumes.append(self.create_volume(
                    v["pool"], v["name"], v["size_bytes"],
                    backing_path=v["backing_path"], backing_format=v["backing_format"],
                ))
            if plan.seed_volume is not None and spec.seed is not None:
                step(STEP_SEED)
                iso = build_seed_iso(spec.name, spec.seed.user_data, spec.seed.meta_data, spec.seed.network_config)
                made_volumes.append(self.upload_volume(plan.seed_volume["pool"], plan.seed_volume["name"], iso))
            step(STEP_DEFINE)
            with translate(f"define {spec.name}"):
                dom = self._conn.defineXMLFlags(plan.xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            defined = True
            reserving.result()
            if start:
                step(STEP_START)
                with translate(f"start {spec.name}"):
                    dom.create()
        except BaseException:
            with contextlib.suppress(BaseException):
                reserving.result()  # let it finish so the rollback below sees every reservation it made
            with contextlib.suppress(ProvError, libvirt.libvirtError):
                if defined:
                    self.delete_guest(spec.name, volumes=True)
            for path in made_volumes:
                with contextlib.suppress(ProvError, libvirt.libvirtError):
                    self.delete_volume_path(path)
            for net, mac in made_reservations:
                with contextlib.suppress(ProvError, libvirt.libvirtError):
                    self.release(net, mac)
            raise
        finally:
            pool.shutdown(wait=True)
        out = self.guest_info(spec.name)
        out["warnings"] = plan.warnings
        return out

    def delete_guest(self, name: str, *, volumes: bool = True, release: bool = True) -> dict[str, Any]:
        """Destroy, undefine (with NVRAM), delete its pool volumes, release its DHCP reservations and console log.

        ``release=False`` keeps the reservations (a guest re-created with the same fixed MAC gets
        the same address without another dnsmasq restart).
        """
        dom = self._dom(name)
        with translate(f"delete {name}"):
            root = parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        pairs = []
        for iface in root.findall("devices/interface[@type='network']"):
            mac_el, src_el = iface.find("mac"), iface.find("source")
            mac = mac_el.get("address", "") if mac_el is not None else ""
            net = src_el.get("network", "") if src_el is not None else ""
            if mac and net:
                pairs.append((net, mac))
        released: list[str] = []

        def release_all() -> None:
            for net, mac in pairs:
                if self.release(net, mac):
                    released.append(mac)

        # Releasing restarts dnsmasq (~0.5 s in libvirt 9): overlap it with destroy/undefine/volumes.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prov-release")
        releasing = pool.submit(release_all) if release and pairs else None
        try:
            with translate(f"delete {name}"):
                if dom.isActive():
                    dom.destroy()
                flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                         | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                try:
                    dom.undefineFlags(flags)
                except libvirt.libvirtError:
                    dom.undefine()  # the test driver knows no NVRAM flag
            removed: list[str] = []
            if volumes:
                for src in root.findall("devices/disk/source"):
                    path = src.get("file")
                    if path and self.delete_volume_path(path):
                        removed.append(path)
            log = root.find("devices/serial/log")
            if log is not None and self.is_local and not self.is_test:
                with contextlib.suppress(OSError):
                    Path(log.get("file", "")).unlink(missing_ok=True)
            if releasing is not None:
                releasing.result()
        finally:
            pool.shutdown(wait=True)
        return {"name": name, "volumes_deleted": removed, "reservations_released": released}
