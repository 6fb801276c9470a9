"""The manual power driver: for machines without a usable BMC.

prov cannot act, so every request is recorded (the power service writes the
history line) and handed to the operator through a log line and the
``OperatorActionRequired`` error; the state is always unknown.
"""

from __future__ import annotations

import logging

from provisioner.drivers.power.base import BootSetting, PowerAction, PowerInterface, PowerState
from provisioner.errors import DriverError

log = logging.getLogger(__name__)


class OperatorActionRequired(DriverError):
    """Not a failure of prov: a person has to press the button."""

    code = "operator_action"
    http_status = 202
    template = "manual power: please {request} host {host} by hand"
    exit_code = 0


class ManualPower(PowerInterface):
    def validate(self) -> None:
        """Nothing to check: a manual host has no BMC parameters."""

    def get_power_state(self) -> PowerState:
        return PowerState.UNKNOWN

    def _ask(self, request: str) -> None:
        host = self.spec.options.get("host_name") or self.spec.address or "?"
        log.warning("operator action needed: %s host %s", request, host)
        raise OperatorActionRequired(request=request, host=host)

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        words = {
            PowerAction.ON: "power on",
            PowerAction.OFF: "power off",
            PowerAction.SOFT_OFF: "shut down",
            PowerAction.CYCLE: "power-cycle",
            PowerAction.RESET: "reset",
        }
        self._ask(words[action])

    def set_boot_device(self, setting: BootSetting) -> None:
        mode = "UEFI" if setting.uefi else "BIOS"
        when = "persistently" if setting.persistent else "for the next boot"
        self._ask(f"set the boot device to {setting.device.value} ({mode}, {when}) on")

    def get_boot_device(self) -> BootSetting | None:
        return None
