"""The libvirt ``VirtInterface``: ``VirtConnection``, assembled from the ``libvirt_*`` adapters.

Every module of this package that imports ``libvirt`` is part of this one adapter, and
everything libvirt raises becomes a ``provisioner.errors`` class there. Guest creation
runs every check first (pre-flight verdict, nested, free memory, duplicate
name/MAC/volume, unknown pool/network/backing image) and only then touches libvirt; a
failure half-way rolls back what was made.

Where each part lives (one class each, all on top of ``LibvirtHost``; ``VirtConnection`` inherits them all):
* ``libvirt_host.py``     the connection, libvirtError translation, SSH targets, host facts
* ``libvirt_storage.py``  pools, volumes, uploads, the NoCloud seed ISO
* ``libvirt_networks.py`` networks, DHCP reservations, leases
* ``libvirt_plan.py``     a new guest's checks and its domain XML (no side effect)
* ``libvirt_domains.py``  existing guests: describe, power, console tail, boot order
* ``libvirt_guests.py``   create (with rollback) and delete

URIs: ``qemu:///system`` (local), ``qemu+unix:///system?socket=...`` (a
libvirtd with its own socket, used by the tests), ``qemu+ssh://[user@]host/system``
(an enrolled KVM host), ``test:///default`` (libvirt's in-process test driver).

The data it shares with the fake (``NetworkSpec``, ``GuestPlan``) lives in spec.py.
"""

from __future__ import annotations

from provisioner.drivers.virt.base import VirtInterface
from provisioner.drivers.virt.libvirt_guests import LibvirtGuests


class VirtConnection(LibvirtGuests, VirtInterface):
    """One libvirt connection and the operations prov needs on it (the conductor's ``VirtInterface``)."""


def open_connection(uri: str, *, console_dir: str | None = None, default_pool: str = "default",
                    default_network: str = "default") -> VirtConnection:
    return VirtConnection(uri, console_dir=console_dir, default_pool=default_pool, default_network=default_network)
