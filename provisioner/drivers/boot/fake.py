"""An in-memory BootInterface for fast unit tests of conductor logic: records every call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner.drivers.boot.base import BootInterface
from provisioner.drivers.boot.configs import check_kind
from provisioner.drivers.boot.dhcp import HostEntry
from provisioner.drivers.boot.tftp import DynamicHook


@dataclass
class FakeBoot(BootInterface):
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    rendered: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (kind, name, context)
    reservations: list[HostEntry] = field(default_factory=list)
    dhcp_running: bool = False
    tftp_hook: DynamicHook | None = None
    tftp_running: bool = False

    def render_config(self, kind: str, name: str, context: Mapping[str, Any]) -> str:
        check_kind(kind)
        self.calls.append(("render", kind, name))
        self.rendered.append((kind, name, dict(context)))
        return f"{kind}/{name} mac={context.get('mac')} token={context.get('token')}\n"

    def start_dhcp(self, entries: Sequence[HostEntry]) -> None:
        self.calls.append(("start_dhcp", len(entries)))
        self.reservations = list(entries)
        self.dhcp_running = True

    def sync_reservations(self, entries: Sequence[HostEntry]) -> int:
        self.calls.append(("sync_reservations", len(entries)))
        changed = len(set(entries) ^ set(self.reservations))
        self.reservations = list(entries)
        return changed

    def stop_dhcp(self) -> None:
        self.calls.append(("stop_dhcp",))
        self.dhcp_running = False

    def start_tftp(self, dynamic: DynamicHook | None = None) -> None:
        self.calls.append(("start_tftp",))
        self.tftp_hook = dynamic
        self.tftp_running = True

    def stop_tftp(self) -> None:
        self.calls.append(("stop_tftp",))
        self.tftp_running = False
