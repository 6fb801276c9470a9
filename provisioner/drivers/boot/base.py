"""The boot interface: what the conductor needs from the boot side of a provisioning network.

Three things, all fed plain values by the conductor (which alone reads the
database): render a boot config of a kind (ipxe, pxelinux, grub) from a
context dict; keep the DHCP reservations equal to a list of ``HostEntry``;
run the TFTP server, whose per-MAC configs come from a hook the conductor
passes in (so TFTP itself never decides who gets an installer).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from provisioner.drivers.boot.configs import BOOT_KINDS
from provisioner.drivers.boot.dhcp import HostEntry
from provisioner.drivers.boot.tftp import DynamicHook


class BootInterface(abc.ABC):
    kinds: tuple[str, ...] = BOOT_KINDS

    @abc.abstractmethod
    def render_config(self, kind: str, name: str, context: Mapping[str, Any]) -> str:
        """``<kind>/<name>.j2`` (name: install, local, discover, boot) rendered with ``context``."""

    @abc.abstractmethod
    def start_dhcp(self, entries: Sequence[HostEntry]) -> None:
        """Write the DHCP server's config and these reservations, then start it (BootError if it cannot)."""

    @abc.abstractmethod
    def sync_reservations(self, entries: Sequence[HostEntry]) -> int:
        """Make the reservations equal ``entries``; returns how many changed."""

    @abc.abstractmethod
    def stop_dhcp(self) -> None: ...

    @abc.abstractmethod
    def start_tftp(self, dynamic: DynamicHook | None = None) -> None:
        """Serve the boot root over TFTP; ``dynamic`` answers the per-MAC config paths."""

    @abc.abstractmethod
    def stop_tftp(self) -> None: ...
