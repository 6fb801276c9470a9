"""A host's checked network spec (provisioner.netspec) as the ``network`` part of every template context.

Plain dicts and lists, prepared once so the templates (templates/common/network.j2) only spell
them: each interface with its resolved name, its MAC (NICs), whether it takes DHCP or a static
address, that address as CIDR and as address + netmask (kickstart wants both forms), its DNS
settings and MTU. ``interfaces`` lists NICs, bonds and VLANs with the one carrying the boot
NIC first: kickstart activates (and names the host on) its first ``network`` line.

:func:`kickstart_problems`: what Anaconda's one-line-per-device ``network`` command cannot say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from provisioner.netspec import (
    Configured,
    NetworkIn,
    NicLike,
    Problem,
    declared,
    ifname,
    is_configured,
    problems,
    raise_invalid,
    resolve,
)

Iface = dict[str, Any]


def _ip(cfg: Configured) -> Iface:
    if not cfg.address:
        return {"static": False, "address": "", "ip": "", "prefix": 0, "netmask": "", "gateway": "",
                "nameservers": [], "search": [], "mtu": cfg.mtu}
    iface = ipaddress.IPv4Interface(cfg.address)
    return {"static": True, "address": str(iface), "ip": str(iface.ip), "prefix": iface.network.prefixlen,
            "netmask": str(iface.netmask), "gateway": cfg.gateway or "", "nameservers": list(cfg.nameservers),
            "search": list(cfg.search), "mtu": cfg.mtu}


def empty_view() -> dict[str, Any]:
    """Nothing declared: the templates keep their DHCP-on-the-boot-NIC output."""
    return {"declared": False, "interfaces": [], "ethernets": [], "bonds": [], "vlans": [], "boot": None,
            "nameservers": [], "search": [], "gateway": None}


def view(nics: Sequence[NicLike], network: NetworkIn, boot_mac: str | None = None) -> dict[str, Any]:
    """The template view of a host's network; raises InvalidInput (naming the field) if it does not check."""
    if not declared(nics, network):
        return empty_view()
    raise_invalid(problems(nics, network))
    res, _ = resolve(nics, network)
    boot_i = next((i for i, n in enumerate(nics) if n.mac == boot_mac), None) if boot_mac else None
    if boot_i is None:
        boot_i = next((i for i, n in enumerate(nics) if n.boot), 0 if nics else None)
    names = [ifname(i, n) for i, n in enumerate(nics)]
    vlans_on: dict[tuple[str, int], list[str]] = {}
    for v, link in enumerate(res.vlan_links):
        if link is not None:
            vlans_on.setdefault(link, []).append(res.vlan_names[v])

    ethernets: dict[int, Iface] = {}
    for i, n in enumerate(nics):
        bond = network.bonds[res.members[i]].name if i in res.members else ""
        if not (i == boot_i or is_configured(n) or bond or ("nic", i) in vlans_on):
            continue  # not part of the declared network: the installed OS leaves it alone
        e = {"kind": "ethernet", "name": names[i], "mac": n.mac, "boot": i == boot_i, "bond": bond,
             "vlans": vlans_on.get(("nic", i), []), **_ip(n)}
        e["dhcp4"] = not e["static"] and e["boot"] and not bond
        e["carries_boot"] = e["boot"] and not bond
        ethernets[i] = e
    bonds: list[Iface] = []
    for k, b in enumerate(network.bonds):
        member_ids = res.bond_members[k]
        on = vlans_on.get(("bond", k), [])
        options = b.options.given()
        if "primary" in options:  # a member by MAC or name: the renderers want its name
            options["primary"] = next(names[i] for i in member_ids if options["primary"] in (nics[i].mac, names[i]))
        d = {"kind": "bond", "name": b.name, "mode": b.mode, "members": [names[i] for i in member_ids],
             "member_macs": [nics[i].mac for i in member_ids], "options": options, "vlans": on,
             "carries_boot": boot_i in member_ids, **_ip(b)}
        d["dhcp4"] = not d["static"] and (d["carries_boot"] or not on)
        bonds.append(d)
    for d in [*ethernets.values(), *bonds]:
        d["has_ip"] = d["static"] or d["dhcp4"]
    vlans: list[Iface] = []
    for v, x in enumerate(network.vlans):
        link = res.vlan_links[v]
        assert link is not None  # checked above
        parent = ethernets[link[1]] if link[0] == "nic" else bonds[link[1]]
        d = {"kind": "vlan", "name": res.vlan_names[v], "id": x.id, "link": parent["name"],
             "link_kind": parent["kind"], "parent": {k: parent[k] for k in _PARENT_KEYS if k in parent},
             "carries_boot": False, **_ip(x)}
        d["dhcp4"] = not d["static"]
        d["has_ip"] = True
        vlans.append(d)
    interfaces = [*ethernets.values(), *bonds, *vlans]
    interfaces.sort(key=lambda d: not d["carries_boot"])  # stable: the boot carrier first, the rest in order
    boot = next((d for d in interfaces if d["carries_boot"]), None)
    gateway = next(({"via": d["gateway"], "interface": d["name"]} for d in interfaces if d["gateway"]), None)
    return {
        "declared": True, "interfaces": interfaces, "ethernets": list(ethernets.values()), "bonds": bonds,
        "vlans": vlans,
        "boot": boot, "gateway": gateway,
        "nameservers": _union(d["nameservers"] for d in interfaces),
        "search": _union(d["search"] for d in interfaces),
    }


# What a VLAN's view repeats of its parent (kickstart merges a trunk bond into its VLAN's line).
_PARENT_KEYS = ("kind", "name", "mac", "mode", "members", "options", "has_ip", "mtu")


def _union(lists: Any) -> list[str]:
    out: list[str] = []
    for items in lists:
        out += [x for x in items if x not in out]
    return out


def kickstart_problems(net: dict[str, Any], nics: Sequence[NicLike], network: NetworkIn) -> list[Problem]:
    """Anaconda's ``network`` command configures one device per line and pykickstart refuses a second
    line for the same ``--device``: a NIC line names its MAC and a VLAN line its parent's name, so
    what cannot be said is a second VLAN on one parent, or a VLAN on a bond that has addresses of
    its own (the bond's line and the VLAN's would both be ``--device=bond0``)."""
    if not net["declared"]:
        return []
    out: list[Problem] = []
    res, _ = resolve(nics, network)
    seen: dict[tuple[str, int], int] = {}
    for v, link in enumerate(res.vlan_links):
        if link is None:
            continue
        loc = ("network", "vlans", v, "link")
        if link in seen:
            out.append(Problem(loc, f"kickstart takes one VLAN per parent device: {net['vlans'][v]['link']} "
                                    f"already carries network.vlans[{seen[link]}]"))
        seen.setdefault(link, v)
        if link[0] == "bond":
            bond = net["bonds"][link[1]]
            if bond["has_ip"]:
                out.append(Problem(loc, f"kickstart cannot put a VLAN on bond {bond['name']}, which has "
                                        "addresses of its own (one network line per device)"))
            elif bond["mtu"] is not None:
                out.append(Problem(("network", "bonds", link[1], "mtu"), "kickstart writes a trunk bond on its "
                                   "VLAN's line, which has no MTU of the bond's own"))
    return out
