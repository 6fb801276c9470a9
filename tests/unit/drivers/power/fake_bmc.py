"""A fake BMC for fast unit tests: pyghmi's own ``Bmc`` server class (run as a subprocess).

argv: PORT, then a 0600 file holding "user:password". Power "on" busy-fails with
completion code 0xC0 (node busy) the first time, to exercise retry classification.
State changes are appended to the file named by argv[3].
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyghmi.ipmi import bmc

port = int(sys.argv[1])
user, _, password = Path(sys.argv[2]).read_text().strip().partition(":")
log_path = sys.argv[3]


class FakeBmc(bmc.Bmc):
    def __init__(self) -> None:
        super().__init__({user: password}, port=port, address="127.0.0.1")
        self.power = "off"
        self.bootdev = "default"

    def _log(self, text: str) -> None:
        with open(log_path, "a") as fh:
            fh.write(text + "\n")

    def get_power_state(self) -> str:
        return self.power

    def power_on(self) -> None:
        self.power = "on"
        self._log("power on")

    def power_off(self) -> None:
        self.power = "off"
        self._log("power off")

    def power_reset(self) -> None:
        self._log("power reset")

    def get_boot_device(self) -> str:
        return self.bootdev

    def set_boot_device(self, bootdevice: str) -> None:
        self.bootdev = bootdevice
        self._log(f"boot {bootdevice}")


FakeBmc().listen(timeout=1)
