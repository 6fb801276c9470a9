"""The shipped boot driver: configs from templates, DHCP by dnsmasq, TFTP by prov's own server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provisioner.drivers.boot import configs, tftp
from provisioner.drivers.boot.base import BootInterface
from provisioner.drivers.boot.dhcp import DhcpConfig, DnsmasqManager, HostEntry
from provisioner.settings import Settings


class NetworkBoot(BootInterface):
    """One per process and provisioning network; rendering needs no started service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dhcp: DnsmasqManager | None = None
        self.tftp: tftp.TftpServer | None = None

    def render_config(self, kind: str, name: str, context: Mapping[str, Any]) -> str:
        return configs.render_config(kind, name, context, self.settings)

    def start_dhcp(self, entries: Sequence[HostEntry]) -> None:
        manager = DnsmasqManager(DhcpConfig.from_settings(self.settings))
        manager.write_config()
        manager.sync(list(entries))
        manager.start()
        self.dhcp = manager

    def sync_reservations(self, entries: Sequence[HostEntry]) -> int:
        if self.dhcp is None:
            return 0
        return self.dhcp.sync(list(entries))

    def stop_dhcp(self) -> None:
        if self.dhcp is not None:
            self.dhcp.stop()
            self.dhcp = None

    def start_tftp(self, dynamic: tftp.DynamicHook | None = None) -> None:
        self.tftp = tftp.serve(self.settings, dynamic)

    def stop_tftp(self) -> None:
        if self.tftp is not None:
            self.tftp.stop()
            self.tftp = None
