"""Which hosts a boot agent serves (issue 14: racks belong to a boot agent's network).

``prov serve --role boot --network CIDR`` serves only the hosts of its networks
(``settings.boot_networks``; empty: every host, the embedded single process). A host is
the agent's when its rack's ``network`` lies inside one of the agent's networks, or, when
its rack has no network (or it has no rack), when its boot NIC's address lies inside one.
A host with neither is served only by an agent without networks: an agent never guesses.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The agent's networks; host bits are tolerated here (the CLI already refused bad input)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@dataclass(frozen=True)
class NetworkFilter:
    """``serves(rack_network, nic_ip)``: is this host (or NIC) this agent's?"""

    networks: tuple[Network, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> NetworkFilter:
        return cls(parse_networks(cidrs))

    @property
    def everything(self) -> bool:
        return not self.networks

    def serves(self, rack_network: str | None, ip: str | None) -> bool:
        if self.everything:
            return True
        if rack_network:
            try:
                net = ipaddress.ip_network(rack_network, strict=False)
            except ValueError:
                log.warning("boot agent: rack network %r is not a network: host not served", rack_network)
                return False
            # a rack network inside one of ours (same family; subnet_of refuses mixed families)
            return any(net.version == mine.version and net.subnet_of(mine)  # type: ignore[arg-type]
                       for mine in self.networks)
        if ip:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(addr in mine for mine in self.networks)
        return False

    def serves_host(self, rack_network: str | None, boot_ips: Sequence[str | None]) -> bool:
        """A host: its rack's network decides; without one, any of its boot NICs' addresses."""
        if self.everything:
            return True
        if rack_network:
            return self.serves(rack_network, None)
        return any(self.serves(None, ip) for ip in boot_ips if ip)
