"""Sample host networks (static addresses, bonds, VLANs) and their template contexts.

Shared by the unit tests (tests/unit/test_netspec.py: checks, view, golden files) and the
validator tests (tests/integration/templates/test_network_validators.py: ksvalidator,
debconf, cloud-init, netplan). Each sample is a host body as the API takes it.
"""

from __future__ import annotations

import copy
from typing import Any

from provisioner import netview
from provisioner import templates_catalog as cat
from provisioner.schemas import HostCreate

MAC0, MAC1, MAC2 = "52:54:00:12:34:56", "52:54:00:12:34:57", "52:54:00:12:34:58"

SAMPLES: dict[str, dict[str, Any]] = {
    # the lab's shape: the boot NIC static (the DHCP reservation only serves the network boot), a VLAN on it
    "static-vlan": {"name": "web01", "nics": [
        {"mac": MAC0, "name": "eth0", "boot": True, "ip": "10.10.0.11", "address": "10.10.0.21/24",
         "gateway": "10.10.0.1", "nameservers": ["10.10.0.1", "10.10.0.2"], "search": ["lab.example.net"]}],
        "network": {"vlans": [{"id": 100, "link": "eth0", "address": "10.30.0.21/24"}]}},
    # LACP bond with the default route and DNS, a jumbo-frame storage NIC with a VLAN of its own
    "bond-lacp": {"name": "web01", "nics": [
        {"mac": MAC0, "name": "eth0", "boot": True, "ip": "10.10.0.11"},
        {"mac": MAC1, "name": "eth1"},
        {"mac": MAC2, "name": "eth2", "address": "10.50.0.21/24", "mtu": 9000}],
        "network": {"bonds": [{"name": "bond0", "mode": "802.3ad", "members": ["eth0", MAC1],
                               "options": {"miimon": 100, "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"},
                               "address": "10.20.0.21/24", "gateway": "10.20.0.1", "nameservers": ["10.20.0.1"],
                               "search": ["lab.example.net"]}],
                    "vlans": [{"id": 200, "link": "eth2", "name": "storage", "address": "10.60.0.21/24"}]}},
    # DHCP on the boot NIC (provisioning), an active-backup trunk carrying one tagged VLAN with the gateway
    "trunk": {"name": "web01", "nics": [
        {"mac": MAC0, "name": "eth0", "boot": True, "ip": "10.10.0.11"},
        {"mac": MAC1, "name": "eth1"}, {"mac": MAC2, "name": "eth2"}],
        "network": {"bonds": [{"name": "bond0", "mode": "active-backup", "members": ["eth1", "eth2"],
                               "options": {"miimon": 100, "updelay": 200, "primary": MAC1}}],
                    "vlans": [{"id": 300, "link": "bond0", "address": "192.0.2.21/24", "gateway": "192.0.2.1",
                               "nameservers": ["192.0.2.53"]}]}},
}
METHODS = {"kickstart": "kickstart/default.j2", "preseed": "preseed/default.j2",
           "autoinstall": "autoinstall/user-data.j2", "image": "deploy/nocloud/network-config.j2"}


def host(sample: str) -> HostCreate:
    return HostCreate.model_validate(copy.deepcopy(SAMPLES[sample]))


def context(method: str, sample: str) -> dict[str, Any]:
    """The template sample context of ``method`` with the host network ``sample``."""
    h = host(sample)
    ctx = cat.sample_context(method)
    ctx["network"] = netview.view(h.nics, h.network)
    return ctx
