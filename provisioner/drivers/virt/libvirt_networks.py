"""libvirt adapter: virtual networks, their DHCP reservations and leases."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import libvirt

from provisioner.drivers.virt.libvirt_host import LibvirtHost, parse_xml, translate
from provisioner.drivers.virt.spec import NetworkSpec
from provisioner.errors import NotFound, VirtRefused
from provisioner.render import render


@dataclass
class NetInfo:
    """What a network's XML says: forward mode, IPv4 subnet, gateway, DHCP range and reservations."""

    name: str
    mode: str
    subnet: ipaddress.IPv4Network | None
    gateway: str | None
    range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    hosts: list[dict[str, str]] = field(default_factory=list)


def parse_network(xml: str) -> NetInfo:
    root = parse_xml(xml)
    name = root.findtext("name") or "?"
    fwd = root.find("forward")
    mode = fwd.get("mode", "nat") if fwd is not None else "isolated"
    ip = root.find("ip")
    if ip is None or ip.get("family", "ipv4") != "ipv4":
        return NetInfo(name, mode, None, None, None)
    gw = ip.get("address", "")
    prefix = ip.get("prefix") or ip.get("netmask") or "24"
    subnet = ipaddress.IPv4Network(f"{gw}/{prefix}", strict=False)
    rng = ip.find("dhcp/range")
    rng_t = (
        (ipaddress.IPv4Address(rng.get("start", "")), ipaddress.IPv4Address(rng.get("end", "")))
        if rng is not None
        else None
    )
    hosts = [dict(h.attrib) for h in ip.findall("dhcp/host")]
    return NetInfo(name, mode, subnet, gw, rng_t, hosts)


class LibvirtNetworks(LibvirtHost):
    """Networks on the connected host: define/delete, reserve/release addresses, read leases."""

    def network_names(self) -> list[str]:
        with translate("list networks"):
            return sorted(n.name() for n in self._conn.listAllNetworks())

    def _network(self, name: str) -> Any:
        with translate("network", kind="network", name=name):
            return self._conn.networkLookupByName(name)

    def network_info(self, name: str) -> NetInfo:
        with translate(f"network {name}"):
            return parse_network(self._network(name).XMLDesc(0))

    def ensure_network(self, spec: NetworkSpec) -> bool:
        """Define, start and autostart ``spec`` unless a network of that name exists. True if created."""
        with translate(f"network {spec.name}"):
            try:
                net = self._conn.networkLookupByName(spec.name)
                created = False
            except libvirt.libvirtError:
                net = self._conn.networkDefineXML(render("libvirt/network.xml.j2", spec.context()))
                created = True
            if not net.isActive():
                net.create()
            if created:
                net.setAutostart(1)
        return created

    def delete_network(self, name: str) -> None:
        net = self._network(name)
        with translate(f"delete network {name}"):
            if net.isActive():
                net.destroy()
            net.undefine()

    def _free_ip(self, info: NetInfo, taken: set[str]) -> str:
        assert info.subnet is not None
        used = taken | {h.get("ip", "") for h in info.hosts} | {info.gateway or ""}
        for addr in info.subnet.hosts():
            if info.range and info.range[0] <= addr <= info.range[1]:
                continue  # keep reservations out of the dynamic range: dnsmasq may have leased it already
            if str(addr) not in used:
                return str(addr)
        raise VirtRefused(reason=f"network {info.name}: no address left for a reservation")

    def reserve(self, network: str, mac: str, name: str, ip: str) -> None:
        xml = render("libvirt/dhcp_host.xml.j2", {"mac": mac, "name": name, "ip": ip})
        net = self._network(network)
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        with translate(f"network {network}: reserve {mac}"):
            if net.isActive():
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
            net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
                       -1, xml, flags)

    def release(self, network: str, mac: str) -> bool:
        try:
            info = self.network_info(network)
        except NotFound:
            return False
        for h in info.hosts:
            if h.get("mac", "").lower() == mac.lower():
                xml = render("libvirt/dhcp_host.xml.j2", {"mac": h["mac"], "name": h.get("name", ""),
                                                          "ip": h.get("ip", "")})
                net = self._network(network)
                flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
                with translate(f"network {network}: release {mac}"):
                    if net.isActive():
                        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
                    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
                               -1, xml, flags)
                return True
        return False

    def leases(self, network: str, mac: str | None = None) -> list[dict[str, Any]]:
        net = self._network(network)
        with translate(f"network {network}: leases"):
            rows = net.DHCPLeases(mac, 0) if mac else net.DHCPLeases(None, 0)
        return [{"mac": r.get("mac"), "ip": r.get("ipaddr"), "hostname": r.get("hostname"),
                 "expiry": r.get("expirytime")} for r in rows or []]
