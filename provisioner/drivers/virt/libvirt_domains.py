"""libvirt adapter: existing domains — read, describe, power, console log tail, boot order."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from provisioner.drivers.virt.libvirt_host import parse_xml, ssh_target, translate
from provisioner.drivers.virt.libvirt_networks import LibvirtNetworks
from provisioner.errors import ProvError, VirtError

# the namespace of the <metadata> element domain.xml.j2 writes (it marks a guest prov made)
PROV_NS = "https://prov.example/xmlns/guest/1"

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


class LibvirtDomains(LibvirtNetworks):
    """Operations on a guest that exists (guest_info asks the networks for each NIC's lease)."""

    def _dom(self, name: str) -> Any:
        with translate("guest", kind="guest", name=name):
            return self._conn.lookupByName(name)

    def state(self, name: str) -> str:
        with translate(f"state {name}", kind="guest", name=name):
            st, _reason = self._dom(name).state(0)
        return STATE_NAMES.get(st, str(st))

    def start(self, name: str) -> None:
        dom = self._dom(name)
        with translate(f"start {name}"):
            if not dom.isActive():
                dom.create()

    def destroy(self, name: str) -> None:
        dom = self._dom(name)
        with translate(f"destroy {name}"):
            if dom.isActive():
                dom.destroy()

    def reset(self, name: str) -> None:
        dom = self._dom(name)
        with translate(f"reset {name}"):
            dom.reset(0)

    def reboot(self, name: str) -> None:
        dom = self._dom(name)
        with translate(f"reboot {name}"):
            dom.reboot(0)

    def shutdown(self, name: str, *, timeout: float = 60.0, poll: float = 0.2) -> str:
        """ACPI shutdown; destroy when the guest has not stopped after ``timeout`` s. Returns how it ended."""
        dom = self._dom(name)
        with translate(f"shutdown {name}"):
            if not dom.isActive():
                return "already-off"
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdown()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return "shutdown"
                time.sleep(poll)
            if dom.isActive():
                dom.destroy()
        return "destroyed"

    def _describe(self, dom: Any) -> dict[str, Any]:
        root = parse_xml(dom.XMLDesc(0))
        st, _ = dom.state(0)
        nics = []
        for iface in root.findall("devices/interface"):
            mac_el, src, model = iface.find("mac"), iface.find("source"), iface.find("model")
            nics.append({
                "mac": mac_el.get("address") if mac_el is not None else None,
                "network": src.get("network") if src is not None else None,
                "bridge": src.get("bridge") if src is not None else None,
                "model": model.get("type") if model is not None else None,
            })
        disks = [{"path": (d.find("source").get("file") if d.find("source") is not None else None),  # type: ignore[union-attr]
                  "device": d.get("device"),
                  "bus": (d.find("target").get("bus") if d.find("target") is not None else None)}  # type: ignore[union-attr]
                 for d in root.findall("devices/disk")]
        log = root.find("devices/serial/log")
        meta = root.find(f"metadata/{{{PROV_NS}}}guest")
        mem = root.find("memory")
        mem_kib = int(mem.text or 0) if mem is not None else 0
        if mem is not None and mem.get("unit", "KiB") == "MiB":
            mem_kib *= 1024
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "state": STATE_NAMES.get(st, str(st)),
            "virt_type": root.get("type"),
            "vcpus": int(root.findtext("vcpu") or 0),
            "memory_mib": mem_kib // 1024,
            "nics": nics,
            "disks": disks,
            "console_log": log.get("file") if log is not None else None,
            "managed": meta is not None,
        }

    def list_guests(self) -> list[dict[str, Any]]:
        with translate("list guests"):
            return sorted((self._describe(d) for d in self._conn.listAllDomains(0)), key=lambda g: g["name"])

    def guest_info(self, name: str) -> dict[str, Any]:
        dom = self._dom(name)
        with translate(f"describe {name}"):
            info = self._describe(dom)
        for nic in info["nics"]:
            nic["ip"] = None
            if nic["network"] and nic["mac"]:
                with contextlib.suppress(ProvError):
                    leases = self.leases(nic["network"], nic["mac"])
                    nic["ip"] = leases[0]["ip"] if leases else None
        return info

    def domain_xml(self, name: str, *, inactive: bool = False) -> str:
        dom = self._dom(name)
        with translate(f"xml {name}"):
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0))

    def console_tail(self, name: str, lines: int = 50) -> list[str]:
        """Last ``lines`` lines of the serial console log (the file virtlogd writes)."""
        path = self._describe(self._dom(name))["console_log"]
        if not path:
            raise VirtError(reason=f"guest {name} has no console log file")
        ssh = ssh_target(self.uri)
        if ssh is not None:
            proc = subprocess.run(["ssh", "-o", "BatchMode=yes", *ssh[1], ssh[0], "tail", "-n", str(lines), path],
                                  capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                raise VirtError(reason=f"console log of {name}: {proc.stderr.strip()[-200:]}")
            return proc.stdout.splitlines()
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 256 * 1024))
                text = fh.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:]

    # ------------------------------------------------------------------ power (for drivers/power/libvirt.py)
    def boot_order(self, name: str) -> list[str]:
        root = parse_xml(self.domain_xml(name, inactive=True))
        return [b.get("dev", "") for b in root.findall("os/boot")]

    def set_boot_order(self, name: str, devices: list[str]) -> None:
        """Rewrite ``<os><boot dev=.../>`` in the persistent definition (takes effect at the next start)."""
        root = parse_xml(self.domain_xml(name, inactive=True))
        os_el = root.find("os")
        if os_el is None:
            raise VirtError(reason=f"guest {name} has no <os> element")
        for b in os_el.findall("boot"):
            os_el.remove(b)
        # per-device <boot order=...> and <os><boot> are mutually exclusive in libvirt
        for dev in root.iter():
            for b in dev.findall("boot"):
                if dev is not os_el:
                    dev.remove(b)
        insert_at = max((i + 1 for i, el in enumerate(os_el) if el.tag in ("type", "loader", "nvram")), default=0)
        for offset, d in enumerate(devices):
            os_el.insert(insert_at + offset, ET.Element("boot", {"dev": d}))
        ET.register_namespace("prov", PROV_NS)
        with translate(f"redefine {name}"):
            self._conn.defineXMLFlags(ET.tostring(root, encoding="unicode"), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
