"""Networking of the installed OS: a host's static addresses, bonds and VLANs - the typed spec and its checks.

A host declares its network on its NICs (``address`` as ``10.0.0.5/24``, ``gateway``,
``nameservers``, ``search``, ``mtu``) and in ``network`` (``bonds`` and ``vlans`` built on
them). With nothing declared the boot NIC takes DHCP and every installer file renders as
it always did. Once something is declared, the interfaces the installed OS configures are
named: a NIC by its ``name`` (``prov<index>`` without one), matched by its MAC.

What each interface gets:

* a NIC: its static address if it has one; DHCP if it is the boot NIC; else no address
  (a bond member, or a NIC that only carries VLANs);
* a bond: its static address; else DHCP, unless it only carries VLANs (then no address,
  a trunk) - a bond holding the boot NIC always takes DHCP without a static address;
* a VLAN: its static address, else DHCP.

The checks (:func:`problems`) name the field of every error: addresses are IPv4 with their
prefix, a gateway lies inside its interface's subnet and a host has one default gateway,
names are Linux interface names, bond members and VLAN links exist, a bond member carries
no configuration of its own. :mod:`provisioner.netview` turns a checked spec into what the
templates (templates/common/network.j2) render. This module is the ground floor: pydantic
and the validators only, so the API's schemas, GitOps inventories and the conductor share it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from provisioner.errors import InvalidInput
from provisioner.validators import IpAddress, check_line, normalize_mac, validate_fqdn

# IFNAMSIZ is 16 with the terminating NUL (include/uapi/linux/if.h): 15 characters. The kernel
# refuses '/', ':' and white space (net/core/dev.c, dev_valid_name); narrower here, so a name is
# also one plain word in kickstart, ifupdown, netplan and shell lines.
IFNAME_MAX = 15
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
IFNAME_RULE = "a Linux interface name: 1-15 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
# Linux bonding modes (Documentation/networking/bonding.rst, "mode").
BondMode = Literal["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb",
                   "balance-alb"]
HashPolicy = Literal["layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4"]
# bonding.rst: which modes read which option.
_LACP_MODES = ("802.3ad",)
_HASH_MODES = ("balance-xor", "802.3ad", "balance-tlb")
_PRIMARY_MODES = ("active-backup", "balance-tlb", "balance-alb")
# 68: the smallest IPv4 MTU (RFC 791); 9216: the largest jumbo frame common switches pass.
MTU_MIN, MTU_MAX = 68, 9216
# glibc's resolver reads at most 3 name servers (MAXNS, resolv.conf(5)); 6 search domains is the
# historical limit other resolvers and installers still apply.
MAX_NAMESERVERS, MAX_SEARCH = 3, 6

Loc = tuple[str | int, ...]


def _strict_str(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    check_line(value.strip(" \t\r\n"))
    return value


def validate_ifname(value: str) -> str:
    if not _IFNAME.match(value):
        raise ValueError(f"not {IFNAME_RULE}")
    return value


def validate_cidr(value: str) -> str:
    """``10.0.0.5/24`` (a netmask is accepted: ``10.0.0.5/255.255.255.0``) -> canonical ``10.0.0.5/24``."""
    if "/" not in value:
        raise ValueError("an address with its prefix length, e.g. 10.0.0.5/24")
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValueError(f"not an address/prefix: {value!r}") from None
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise ValueError("static addresses are IPv4 (IPv6 is not rendered by the installers' templates yet)")
    net = iface.network
    if net.prefixlen == 0:
        raise ValueError("/0 is not a subnet")
    # /31 and /32 have no network or broadcast address (RFC 3021)
    if net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
        which = "network" if iface.ip == net.network_address else "broadcast"
        raise ValueError(f"{iface.ip} is the {which} address of {net}")
    return str(iface)


def _ref(value: str) -> str:
    """A NIC by MAC (normalised) or an interface by name."""
    try:
        return normalize_mac(value)
    except ValueError:
        return validate_ifname(value)


IfName = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_ifname)]
Cidr = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_cidr)]
IfRef = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_ref)]
Domain = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_fqdn)]


@dataclass(frozen=True)
class Problem:
    loc: Loc  # where, as pydantic locates it (("network", "bonds", 0, "members", 1))
    message: str

    @property
    def field(self) -> str:
        """``network.bonds[0].members[1]``: how the API's error envelope names a field."""
        out = ""
        for p in self.loc:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
        return out


def validation_error(title: str, found: Sequence[Problem]) -> ValidationError:
    """``found`` as a pydantic error: raised in a validator, each keeps its location below the field."""
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError("value_error", "{reason}", {"reason": p.message}), loc=p.loc,
                         input=None) for p in found])


def raise_invalid(found: Sequence[Problem], prefix: Loc = ()) -> None:
    """The first problem as InvalidInput (a 422 naming the field), for checks outside a request model."""
    if found:
        p = found[0]
        raise InvalidInput(field=Problem((*prefix, *p.loc), p.message).field, reason=p.message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


class IpSettings(_Strict):
    """Static IPv4 of one interface (a NIC, a bond or a VLAN); none of it: see the module's rules."""

    address: Cidr | None = Field(default=None, description="static IPv4 address with prefix, e.g. 10.0.0.5/24")
    gateway: IpAddress | None = Field(default=None, description="default gateway (one per host), in the subnet")
    nameservers: list[IpAddress] = Field(default_factory=list, max_length=MAX_NAMESERVERS)
    search: list[Domain] = Field(default_factory=list, max_length=MAX_SEARCH, description="DNS search domains")
    mtu: int | None = Field(default=None, ge=MTU_MIN, le=MTU_MAX)

    @model_validator(mode="after")
    def _ip_rules(self) -> IpSettings:
        found = ip_problems(self)
        if found:
            raise validation_error(type(self).__name__, found)
        return self


class Configured(Protocol):
    address: str | None
    gateway: str | None
    nameservers: list[str]
    search: list[str]
    mtu: int | None


def ip_problems(cfg: Configured) -> list[Problem]:
    out: list[Problem] = []
    if not cfg.address:
        for key in ("gateway", "nameservers", "search"):
            if getattr(cfg, key):
                out.append(Problem((key,), "needs a static address on the same interface"))
        return out
    iface = ipaddress.IPv4Interface(cfg.address)
    if cfg.gateway:
        gw = ipaddress.ip_address(cfg.gateway)
        if gw not in iface.network:
            out.append(Problem(("gateway",), f"{gw} is outside {iface.network}, the subnet of {cfg.address}"))
        elif gw == iface.ip:
            out.append(Problem(("gateway",), f"{gw} is the interface's own address"))
    return out


def is_configured(cfg: Configured) -> bool:
    return bool(cfg.address or cfg.gateway or cfg.nameservers or cfg.search or cfg.mtu is not None)


class BondOptions(_Strict):
    """Bonding driver options (bonding.rst names; each renderer spells them its own way)."""

    miimon: int | None = Field(default=None, ge=0, le=60000, description="MII link check interval, ms (0: off)")
    lacp_rate: Literal["slow", "fast"] | None = Field(default=None, description="802.3ad only")
    xmit_hash_policy: HashPolicy | None = Field(default=None, description="balance-xor, 802.3ad, balance-tlb")
    primary: IfRef | None = Field(default=None, description="a member (active-backup, balance-tlb, balance-alb)")
    updelay: int | None = Field(default=None, ge=0, le=600000, description="ms, a multiple of miimon")
    downdelay: int | None = Field(default=None, ge=0, le=600000, description="ms, a multiple of miimon")

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class BondIn(IpSettings):
    name: IfName
    mode: BondMode = "active-backup"
    members: list[IfRef] = Field(min_length=1, max_length=16, description="NICs by name or MAC")
    options: BondOptions = Field(default_factory=BondOptions)

    @model_validator(mode="after")
    def _mode_options(self) -> BondIn:
        o, found = self.options, []
        for key, value, modes in (("lacp_rate", o.lacp_rate, _LACP_MODES),
                                  ("xmit_hash_policy", o.xmit_hash_policy, _HASH_MODES),
                                  ("primary", o.primary, _PRIMARY_MODES)):
            if value is not None and self.mode not in modes:
                found.append(Problem(("options", key), f"only for mode {' or '.join(modes)}, not {self.mode}"))
        for key in ("updelay", "downdelay"):
            delay = getattr(o, key)
            if delay:
                # bonding.rst: the delays work with the MII monitor only, in multiples of miimon
                # (the kernel rounds anything else down, with a warning).
                if not o.miimon:
                    found.append(Problem(("options", key), "needs miimon (the delays count MII checks)"))
                elif delay % o.miimon:
                    found.append(Problem(("options", key), f"must be a multiple of miimon ({o.miimon} ms)"))
        if found:
            raise validation_error("BondIn", found)
        return self


class VlanIn(IpSettings):
    id: int = Field(ge=1, le=4094, description="802.1Q VLAN id (0 and 4095 are reserved)")
    link: IfRef = Field(description="the NIC (name or MAC) or bond the VLAN rides on")
    name: IfName | None = Field(default=None, description="default <link>.<id>")

    @model_validator(mode="after")
    def _name_rule(self) -> VlanIn:
        # Anaconda's --interfacename rules (pykickstart, network): a dotted name is NAME.ID, a name
        # starting with "vlan" is vlanID; ifupdown creates NAME.ID VLANs by itself as well.
        n = self.name
        if n is not None and "." in n and not n.endswith(f".{self.id}"):
            raise validation_error("VlanIn", [Problem(("name",), f"a name with a dot must end in .{self.id}")])
        if n is not None and n.startswith("vlan") and "." not in n and n != f"vlan{self.id}":
            raise validation_error("VlanIn", [Problem(("name",), f"a name starting with 'vlan' must be vlan{self.id}")])
        return self


class NetworkIn(_Strict):
    """The host-level part of its network: bonds and VLANs (NICs carry their own addresses)."""

    bonds: list[BondIn] = Field(default_factory=list, max_length=16)
    vlans: list[VlanIn] = Field(default_factory=list, max_length=64)


class NetworkPublic(BaseModel):
    bonds: list[dict[str, Any]]
    vlans: list[dict[str, Any]]


def network_of(bonds: Any, vlans: Any) -> NetworkIn:
    """A stored network (the host's JSON columns) as the model."""
    return NetworkIn.model_validate({"bonds": list(bonds or []), "vlans": list(vlans or [])})


# --------------------------------------------------------------------------- the host as a whole
class NicLike(Configured, Protocol):
    mac: str
    name: str
    boot: bool


def ifname(i: int, nic: NicLike) -> str:
    return nic.name or f"prov{i}"


def reachable_at(nic: Any) -> str | None:
    """Where the installed OS answers on this NIC: its static address, else its DHCP reservation."""
    address: str | None = getattr(nic, "address", None)
    return address.split("/", 1)[0] if address else nic.ip


def declared(nics: Sequence[NicLike], network: NetworkIn) -> bool:
    return bool(network.bonds or network.vlans or any(is_configured(n) for n in nics))


@dataclass
class Resolved:
    """What a checked host spec refers to: NIC indexes per bond, each VLAN's link and name."""

    members: dict[int, int]  # NIC index -> bond index
    bond_members: list[list[int]]  # per bond, its NICs' indexes in the order given
    vlan_links: list[tuple[str, int] | None]  # ("nic" | "bond", index) per VLAN
    vlan_names: list[str]


def _where(loc: Loc) -> str:
    return Problem(loc, "").field


def resolve(nics: Sequence[NicLike], network: NetworkIn) -> tuple[Resolved, list[Problem]]:
    out: list[Problem] = []
    by_mac = {n.mac: i for i, n in enumerate(nics)}
    by_name = {ifname(i, n): i for i, n in enumerate(nics)}
    bonds = {b.name: k for k, b in enumerate(network.bonds)}

    def nic_of(ref: str) -> int | None:
        return by_mac.get(ref, by_name.get(ref))

    members: dict[int, int] = {}
    ordered: list[list[int]] = []
    for k, bond in enumerate(network.bonds):
        mine: set[int] = set()
        ordered.append([])
        for j, ref in enumerate(bond.members):
            loc: Loc = ("network", "bonds", k, "members", j)
            i = nic_of(ref)
            if i is None:
                what = "bonds hold NICs, not other bonds" if ref in bonds else "a NIC's name or MAC"
                out.append(Problem(loc, f"no NIC {ref!r} on this host ({what})"))
            elif i in mine:
                out.append(Problem(loc, f"NIC {ifname(i, nics[i])} is listed twice"))
            elif i in members:
                out.append(Problem(loc, f"NIC {ifname(i, nics[i])} is already a member of bond "
                                        f"{network.bonds[members[i]].name}"))
            else:
                mine.add(i)
                members[i] = k
                ordered[k].append(i)
        if bond.options.primary is not None:
            i = nic_of(bond.options.primary)
            if i is None or i not in mine:
                out.append(Problem(("network", "bonds", k, "options", "primary"), "must be one of the members"))
    links: list[tuple[str, int] | None] = []
    names: list[str] = []
    pairs: dict[tuple[str, int, int], int] = {}
    for v, vlan in enumerate(network.vlans):
        i = nic_of(vlan.link)
        link: tuple[str, int] | None = ("nic", i) if i is not None else \
            ("bond", bonds[vlan.link]) if vlan.link in bonds else None
        links.append(link)
        base = vlan.link
        if link is None:
            out.append(Problem(("network", "vlans", v, "link"), f"no NIC or bond {vlan.link!r} on this host"))
        elif link[0] == "nic":
            base = ifname(link[1], nics[link[1]])
            if link[1] in members:
                out.append(Problem(("network", "vlans", v, "link"), f"NIC {base} is a member of bond "
                                   f"{network.bonds[members[link[1]]].name}: put the VLAN on the bond"))
        name = vlan.name or f"{base}.{vlan.id}"
        if vlan.name is None and len(name) > IFNAME_MAX:
            out.append(Problem(("network", "vlans", v, "name"),
                               f"the default name {name!r} is longer than {IFNAME_MAX} characters: give one"))
        names.append(name)
        if link is not None:
            key = (*link, vlan.id)
            if key in pairs:
                out.append(Problem(("network", "vlans", v, "id"), f"VLAN {vlan.id} on {base} is already "
                                                                  f"network.vlans[{pairs[key]}]"))
            pairs.setdefault(key, v)
    return Resolved(members, ordered, links, names), out


def problems(nics: Sequence[NicLike], network: NetworkIn) -> list[Problem]:
    """Everything wrong with a host's network as a whole (each NIC, bond and VLAN is valid on its own)."""
    if not declared(nics, network):
        return []
    res, out = resolve(nics, network)
    for i, n in enumerate(nics):
        if i in res.members:
            for key in ("address", "gateway", "nameservers", "search", "mtu"):
                if getattr(n, key) not in (None, [], ""):
                    out.append(Problem(("nics", i, key), f"NIC {ifname(i, n)} is a member of bond "
                                       f"{network.bonds[res.members[i]].name}: configure the bond, not its members"))
    # Names: the NICs the OS will configure, then bonds, then VLANs; a clash names the later one.
    linked = {lk[1] for lk in res.vlan_links if lk is not None and lk[0] == "nic"}
    taken: dict[str, Loc] = {}

    def claim(name: str, loc: Loc) -> None:
        if name in taken:
            out.append(Problem(loc, f"{name!r} is already the name of {_where(taken[name])}"))
        else:
            taken[name] = loc

    for i, n in enumerate(nics):
        if n.boot or is_configured(n) or i in res.members or i in linked:
            if n.name and not _IFNAME.match(n.name):
                out.append(Problem(("nics", i, "name"), f"not {IFNAME_RULE} (the installed OS names the NIC so)"))
            claim(ifname(i, n), ("nics", i, "name"))
    for k, bond in enumerate(network.bonds):
        claim(bond.name, ("network", "bonds", k, "name"))
    for v, name in enumerate(res.vlan_names):
        claim(name, ("network", "vlans", v, "name"))
    # One default route per host: two gateways would be two default routes fighting.
    configs: list[tuple[Loc, Configured]] = [(("nics", i), n) for i, n in enumerate(nics)]
    configs += [(("network", "bonds", k), b) for k, b in enumerate(network.bonds)]
    configs += [(("network", "vlans", v), x) for v, x in enumerate(network.vlans)]
    first_gw: Loc | None = None
    addresses: dict[str, Loc] = {}
    for loc, cfg in configs:
        if cfg.gateway:
            if first_gw is None:
                first_gw = (*loc, "gateway")
            else:
                out.append(Problem((*loc, "gateway"), f"one default gateway per host: {_where(first_gw)} has it"))
        if cfg.address:
            ip = cfg.address.split("/", 1)[0]
            if ip in addresses:
                out.append(Problem((*loc, "address"), f"{ip} is already the address of {_where(addresses[ip])}"))
            addresses.setdefault(ip, (*loc, "address"))
    return out
