"""An in-memory ``VirtInterface``: a KVM host that records guests, for fast tests and demos.

URIs ``fake://...`` (e.g. ``fake:///kvm1``). Every connection to the same URI sees the same
``FakeHost`` (like libvirt's ``test:///default``), so a request and a task thread agree on
what exists. The fake runs the same checks as the libvirt driver (verdict, nested, duplicate
name/MAC/volume, free memory, unknown pool/network) with the same error classes, walks
``create_guest``'s steps in order, and can be told to fail at one (``FakeHost.fail_at``) so
rollback and task failure paths are testable without libvirt.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from provisioner.drivers.virt.base import (
    STEP_DEFINE,
    STEP_NETWORKS,
    STEP_SEED,
    STEP_START,
    STEP_VOLUMES,
    StepFn,
    VirtInterface,
)
from provisioner.drivers.virt.preflight import HARDWARE_KVM, VirtReport
from provisioner.drivers.virt.spec import GuestPlan, GuestSpec, NetworkSpec
from provisioner.errors import Conflict, NotFound, VirtError, VirtRefused

SCHEME = "fake://"
_GIB = 1024**3


def hardware_report() -> VirtReport:
    """A host with hardware KVM and nested virtualisation (the fake's default verdict)."""
    return VirtReport(overall=HARDWARE_KVM, summary="fake host: hardware KVM with nested virtualisation",
                      kvm_allowed=True, nested_allowed=True, cpu_vendor="intel", kvm_module="kvm_intel",
                      generations=[], libvirt={"domain_types": ["kvm", "qemu"], "offers_kvm": True})


@dataclass
class FakeHost:
    """The state behind one fake URI. Tests set ``report``, ``free_memory_mib``, ``fail_at``..."""

    report: VirtReport = field(default_factory=hardware_report)
    free_memory_mib: int = 16384
    pools: dict[str, str] = field(default_factory=lambda: {"default": "/var/lib/libvirt/images"})
    networks: dict[str, str] = field(default_factory=lambda: {"default": "192.168.122.0/24"})  # name -> subnet
    guests: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)  # path -> pool
    reservations: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # network -> mac -> host
    console: dict[str, list[str]] = field(default_factory=dict)  # guest -> serial console lines
    fail_at: str | None = None  # a STEP_* name: create_guest raises VirtError when it gets there
    calls: list[str] = field(default_factory=list)  # what was done, in order ("define g1", ...)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)


_HOSTS: dict[str, FakeHost] = {}
_HOSTS_LOCK = threading.Lock()


def fake_host(uri: str) -> FakeHost:
    """The state of ``uri`` (made on first use)."""
    with _HOSTS_LOCK:
        return _HOSTS.setdefault(uri, FakeHost())


def reset() -> None:
    """Forget every fake host (tests)."""
    with _HOSTS_LOCK:
        _HOSTS.clear()


class FakeVirt(VirtInterface):
    def __init__(self, uri: str, *, default_pool: str = "default", default_network: str = "default") -> None:
        if not uri.startswith(SCHEME):
            raise VirtError(reason=f"connect {uri}: not a {SCHEME} URI")
        self.uri = uri
        self.host = fake_host(uri)
        self.default_pool = default_pool
        self.default_network = default_network

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ the host
    def domain_capabilities(self) -> dict[str, Any]:
        return {"domain_types": list(self.host.report.libvirt.get("domain_types", ["qemu"])),
                "host_model": None, "host_model_features": []}

    def preflight(self) -> VirtReport:
        return self.host.report

    # ------------------------------------------------------------------ plan (every check, no side effect)
    def plan_guest(self, spec: GuestSpec, report: VirtReport | None = None, *,
                   auto_networks: dict[str, NetworkSpec] | None = None,
                   auto_pools: dict[str, str] | None = None) -> GuestPlan:
        h, report = self.host, report or self.host.report
        auto_networks, auto_pools = auto_networks or {}, auto_pools or {}
        if spec.virt_type == "kvm" and not report.kvm_allowed:
            raise VirtRefused(reason=f"virt_type kvm refused: host verdict is {report.overall} ({report.summary}); "
                              "ask for virt_type qemu explicitly to run the guest under emulation",
                              field="virt_type", verdict=report.overall)
        if spec.nested and not report.nested_allowed:
            raise VirtRefused(reason=f"nested virtualisation requested but the host has none "
                              f"(verdict {report.overall})", field="nested", verdict=report.overall)
        with h.lock:
            if spec.name in h.guests:
                raise Conflict(reason=f"a guest named {spec.name!r} already exists")
            if spec.memory_mib > h.free_memory_mib:
                raise VirtRefused(reason=f"memory {spec.memory_mib} MiB exceeds the host's free memory "
                                  f"({h.free_memory_mib} MiB)", field="memory_mib")
            make_pools: dict[str, str] = {}
            volumes: list[dict[str, Any]] = []
            for i, disk in enumerate(spec.disks):
                pool = disk.pool or self.default_pool
                pool_dir = self._pool_dir(pool, auto_pools, make_pools, f"disks[{i}].pool")
                name = f"{spec.name}-disk{i}.qcow2"
                path = f"{pool_dir.rstrip('/')}/{name}"
                if path in h.volumes:
                    raise Conflict(reason=f"volume {pool}/{name} already exists")
                volumes.append({"pool": pool, "name": name, "size_bytes": int(disk.size_gib * _GIB), "path": path,
                                "backing_path": None, "backing_format": disk.backing_format,
                                "bus": "virtio" if disk.bus == "virtio-blk" else "scsi"})
            seed = None
            if spec.seed is not None:
                pool = spec.disks[0].pool if spec.disks and spec.disks[0].pool else self.default_pool
                pool_dir = self._pool_dir(pool, auto_pools, make_pools, "seed")
                seed = {"pool": pool, "name": f"{spec.name}-seed.iso",
                        "path": f"{pool_dir.rstrip('/')}/{spec.name}-seed.iso"}
            make_networks, reservations, nics = self._plan_nics(spec, auto_networks)
        spec = spec.model_copy(update={"nics": nics})
        root = ET.Element("domain", {"type": spec.virt_type})
        ET.SubElement(root, "name").text = spec.name
        ET.SubElement(root, "memory", {"unit": "MiB"}).text = str(spec.memory_mib)
        ET.SubElement(root, "vcpu").text = str(spec.vcpus)
        warnings = list(report.warnings) if spec.virt_type == "kvm" else []
        return GuestPlan(spec, ET.tostring(root, encoding="unicode"), volumes, reservations, seed, warnings,
                         make_networks, make_pools)

    def _pool_dir(self, pool: str, auto: dict[str, str], make: dict[str, str], where: str) -> str:
        if pool in self.host.pools:
            return self.host.pools[pool]
        if pool in auto:
            make[pool] = auto[pool]
            return auto[pool]
        raise VirtRefused(reason=f"unknown storage pool {pool!r} (known: {', '.join(sorted(self.host.pools))})",
                          field=where)

    def _plan_nics(self, spec: GuestSpec, auto: dict[str, NetworkSpec]
                   ) -> tuple[list[NetworkSpec], list[dict[str, str]], list[Any]]:
        h = self.host
        used = {n["mac"]: g for g, rec in h.guests.items() for n in rec["nics"]}
        make: list[NetworkSpec] = []
        reservations: list[dict[str, str]] = []
        nics = []
        for i, nic in enumerate(spec.nics):
            if nic.network is None and nic.bridge is None:
                nic = nic.model_copy(update={"network": self.default_network})
            mac = nic.mac or next(m for m in (f"52:54:00:fa:{n // 256 % 256:02x}:{n % 256:02x}" for n in range(65536))
                                  if m not in used)
            if mac in used:
                raise Conflict(reason=f"MAC {mac} is already used by guest {used[mac]!r}", field=f"nics[{i}].mac")
            used[mac] = spec.name
            if nic.network is not None:
                if nic.network in h.networks:
                    subnet = h.networks[nic.network]
                elif nic.network in auto:
                    make.append(auto[nic.network])
                    subnet = auto[nic.network].subnet
                else:
                    known = ", ".join(sorted(h.networks))
                    raise VirtRefused(reason=f"unknown network {nic.network!r} (known: {known})",
                                      field=f"nics[{i}].network")
                taken = {r["ip"] for r in h.reservations.get(nic.network, {}).values()}
                taken |= {r["ip"] for r in reservations if r["network"] == nic.network}
                ip = nic.ip or next(str(a) for a in list(ipaddress.IPv4Network(subnet).hosts())[1:]
                                    if str(a) not in taken)
                if ip in taken:
                    raise Conflict(reason=f"{ip} is already reserved on network {nic.network}", field=f"nics[{i}].ip")
                reservations.append({"network": nic.network, "mac": mac, "name": spec.name, "ip": ip})
            nics.append(nic.model_copy(update={"mac": mac}))
        return make, reservations, nics

    # ------------------------------------------------------------------ create and delete
    def create_guest(self, spec: GuestSpec, report: VirtReport | None = None, *, start: bool = True,
                     auto_networks: dict[str, NetworkSpec] | None = None,
                     auto_pools: dict[str, str] | None = None, on_step: StepFn | None = None) -> dict[str, Any]:
        plan = self.plan_guest(spec, report, auto_networks=auto_networks, auto_pools=auto_pools)
        h, name = self.host, plan.spec.name

        def step(what: str) -> None:
            if on_step is not None:
                on_step(what)
            if h.fail_at == what:
                raise VirtError(reason=f"{what} of {name}: injected failure")
            h.calls.append(f"{what} {name}")

        step(STEP_NETWORKS)
        with h.lock:  # shared infrastructure: it stays even if this guest fails
            h.networks.update({n.name: n.subnet for n in plan.make_networks})
            h.pools.update(plan.make_pools)
        made: list[str] = []
        try:
            step(STEP_VOLUMES)
            for v in plan.volumes:
                h.volumes[v["path"]] = v["pool"]
                made.append(v["path"])
            if plan.seed_volume is not None:
                step(STEP_SEED)
                h.volumes[plan.seed_volume["path"]] = plan.seed_volume["pool"]
                made.append(plan.seed_volume["path"])
            step(STEP_DEFINE)
            with h.lock:
                h.guests[name] = {"spec": plan.spec, "uuid": str(uuid.uuid4()), "state": "shutoff",
                                  "disks": list(made), "nics": [{"mac": n.mac, "network": n.network,
                                                                 "bridge": n.bridge} for n in plan.spec.nics]}
                for r in plan.reservations:
                    h.reservations.setdefault(r["network"], {})[r["mac"]] = {"name": name, "ip": r["ip"]}
            if start:
                step(STEP_START)
                h.guests[name]["state"] = "running"
        except BaseException:
            with h.lock:
                if name in h.guests:
                    self.delete_guest(name)
                for path in made:
                    h.volumes.pop(path, None)
            raise
        return {**self.guest_info(name), "warnings": plan.warnings}

    def delete_guest(self, name: str, *, volumes: bool = True, release: bool = True) -> dict[str, Any]:
        h = self.host
        with h.lock:
            rec = self._rec(name)
            del h.guests[name]
            removed = [p for p in rec["disks"] if volumes and h.volumes.pop(p, None) is not None]
            released = [n["mac"] for n in rec["nics"]
                        if release and n["network"] and h.reservations.get(n["network"], {}).pop(n["mac"], None)]
            h.calls.append(f"delete {name}")
        return {"name": name, "volumes_deleted": removed, "reservations_released": released}

    # ------------------------------------------------------------------ read
    def _rec(self, name: str) -> dict[str, Any]:
        rec = self.host.guests.get(name)
        if rec is None:
            raise NotFound(kind="guest", name=name)
        return rec

    def _describe(self, name: str) -> dict[str, Any]:
        rec = self._rec(name)
        spec: GuestSpec = rec["spec"]
        nics = []
        for n in rec["nics"]:
            held = self.host.reservations.get(n["network"] or "", {}).get(n["mac"])
            ip = held["ip"] if held and rec["state"] == "running" else None
            nics.append({**n, "model": "virtio", "ip": ip})
        return {"name": name, "uuid": rec["uuid"], "state": rec["state"], "virt_type": spec.virt_type,
                "vcpus": spec.vcpus, "memory_mib": spec.memory_mib, "nics": nics,
                "disks": [{"path": p, "device": "disk", "bus": "virtio"} for p in rec["disks"]],
                "console_log": spec.console_log, "managed": True}

    def list_guests(self) -> list[dict[str, Any]]:
        with self.host.lock:
            return [self._describe(n) for n in sorted(self.host.guests)]

    def guest_info(self, name: str) -> dict[str, Any]:
        with self.host.lock:
            return self._describe(name)

    def state(self, name: str) -> str:
        return str(self._rec(name)["state"])

    def console_tail(self, name: str, lines: int = 50) -> list[str]:
        self._rec(name)
        return self.host.console.get(name, [])[-lines:]

    # ------------------------------------------------------------------ power
    def _set_state(self, name: str, state: str, what: str) -> None:
        with self.host.lock:
            self._rec(name)["state"] = state
            self.host.calls.append(f"{what} {name}")

    def start(self, name: str) -> None:
        self._set_state(name, "running", "start")

    def shutdown(self, name: str, *, timeout: float = 60.0, poll: float = 0.2) -> str:
        if self.state(name) != "running":
            return "already-off"
        self._set_state(name, "shutoff", "shutdown")
        return "shutdown"

    def destroy(self, name: str) -> None:
        self._set_state(name, "shutoff", "destroy")

    def reboot(self, name: str) -> None:
        if self.state(name) != "running":
            raise VirtError(reason=f"reboot {name}: domain is not running")
        self._set_state(name, "running", "reboot")


def open_fake(uri: str, *, default_pool: str = "default", default_network: str = "default") -> FakeVirt:
    return FakeVirt(uri, default_pool=default_pool, default_network=default_network)
