"""The power interface every BMC driver implements (Ironic's PowerInterface, smaller).

A driver instance is built from a ``BmcSpec`` (decrypted credentials live only
in that object, in memory, for the duration of a call). ``validate()`` is cheap
and never touches the BMC. Every method that does touch the BMC must finish or
raise within ``spec.timeout`` seconds and raise only ``provisioner.errors``
classes (BmcAuthError, BmcUnreachable, BmcTimeout, BmcBusy, BmcUnsupported,
BmcError).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

# The enums are the API's words too (provisioner/states.py); drivers import them from here or there.
from provisioner.states import BootDevice, PowerAction, PowerState

__all__ = ["BmcSpec", "BootDevice", "BootSetting", "PowerAction", "PowerInterface", "PowerState"]


@dataclass(frozen=True)
class BootSetting:
    device: BootDevice
    persistent: bool = False
    uefi: bool = False


@dataclass(frozen=True)
class BmcSpec:
    """Everything a driver needs to reach one BMC. ``password`` is plaintext in memory only."""

    kind: str  # ipmi | redfish | libvirt | manual (| fake, built directly by tests: see fake.py)
    address: str
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float = 10.0

    @property
    def label(self) -> str:
        """How the BMC is named in messages (never includes credentials)."""
        return f"{self.address}:{self.port}" if self.port else self.address


class PowerInterface(abc.ABC):
    def __init__(self, spec: BmcSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def validate(self) -> None:
        """Check the stored parameters without touching the BMC; raise InvalidInput."""

    @abc.abstractmethod
    def get_power_state(self) -> PowerState: ...

    @abc.abstractmethod
    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        """Request a change; the power service polls ``get_power_state`` to confirm it."""

    @abc.abstractmethod
    def set_boot_device(self, setting: BootSetting) -> None: ...

    @abc.abstractmethod
    def get_boot_device(self) -> BootSetting | None:
        """The current override, or None when the BMC cannot tell."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/connections held for this BMC."""
