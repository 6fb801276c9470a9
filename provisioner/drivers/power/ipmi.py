"""IPMI 2.0 / RMCP+ power control through pyghmi, kept in worker processes.

pyghmi 1.6.19 runs one shared I/O thread and one session table per process,
and its client misbehaves under concurrency (see docs/field notes): packets
already received are not drained before a caller waits (stalls of ~1 s),
two locks are taken in opposite orders (deadlock), rare ~24 s logins, a
process-wide hang from toggling blocking mode on shared sockets, and a hang
when a second ``Command`` to the same BMC is built with ``str`` credentials.
A ``Command`` built against a dead address also blocks ~30 s in its
constructor.

How prov contains all of that (ipmi_pool.py: the parent side, the pool and
its deadlines; ipmi_worker.py: the worker side, the only one that imports pyghmi):

* pyghmi runs only in **worker processes**, forked on demand from a small
  "zygote" process that has pyghmi preloaded (a new worker costs a few ms;
  multiprocessing's forkserver would re-import the controller's ``__main__``
  in every worker, ~1 s each). Each worker runs one call at a time, so the
  cross-thread bugs (lock order, shared blocking mode, sessions racing in one
  table) cannot happen in it.
* The parent bounds every call: it waits on the worker's pipe with the call's
  deadline; a worker that overruns is killed (SIGKILL) and replaced. A dead
  BMC, a 24 s login or any pyghmi hang therefore costs one worker, never the
  shared I/O thread of other calls.
* Inside a worker, two small patches are applied: receive with
  ``MSG_DONTWAIT`` and send without touching the socket's blocking mode (the
  I/O thread and the caller no longer flip the mode under each other), and
  ``_io_wait`` also wakes as soon as a packet for the waiting BMC is already
  queued (the "not drained before waiting" stall).
* Credentials are handed to pyghmi as ``bytes`` (``str`` hangs a second
  ``Command`` to the same BMC) and travel parent -> worker over a pipe, never
  on a command line or in the environment.
* A BMC is routed to the worker that served it last when that worker is free,
  so its RMCP+ session is reused; sessions idle longer than ``SESSION_IDLE``
  are dropped before use (BMCs expire idle sessions, IPMI 2.0 §6.12.15).
* pyghmi never sees ICMP errors (unconnected sockets) and reports "no answer"
  as an empty exception: beside each call the parent runs a session-less
  probe on a connected UDP socket (ipmi_probe.py), so a closed port or dead
  host ends the call at once as ``bmc_unreachable`` and only true silence is
  ``bmc_timeout``. Completion and RMCP+ status codes are named from the IPMI
  tables (ipmi_codes.py), which also build the messages.
"""

from __future__ import annotations

import logging
from typing import Any

from provisioner.drivers.power.base import (
    BootDevice,
    BootSetting,
    PowerAction,
    PowerInterface,
    PowerState,
)
from provisioner.drivers.power.ipmi_pool import get_pool
from provisioner.errors import InvalidInput

log = logging.getLogger(__name__)

# IPMI privilege levels (IPMI 2.0 table 6-4)
PRIVILEGES = {"callback": 1, "user": 2, "operator": 3, "admin": 4, "administrator": 4}
# Cipher suites pyghmi can speak: 17 (SHA-256/AES) and 3 (SHA-1/AES). IPMI 2.0 table 22-20.
CIPHER_SUITES = (3, 17)

_BOOTDEV_TO_PYGHMI = {
    BootDevice.PXE: "network",
    BootDevice.DISK: "hd",
    BootDevice.CDROM: "optical",
    BootDevice.BIOS: "setup",
    BootDevice.DEFAULT: "default",
}
_BOOTDEV_FROM_PYGHMI = {v: k for k, v in _BOOTDEV_TO_PYGHMI.items()}


class IpmiPower(PowerInterface):
    """Power and boot device through IPMI 2.0 chassis commands (IPMI 2.0 §28)."""

    def validate(self) -> None:
        s = self.spec
        if not s.address:
            raise InvalidInput(field="bmc_address", reason="required for IPMI")
        if not s.username:
            raise InvalidInput(field="bmc_username", reason="required for IPMI")
        if s.password is None:
            raise InvalidInput(field="bmc_password", reason="required for IPMI")
        if s.port is not None and not 0 < s.port < 65536:
            raise InvalidInput(field="bmc_port", reason="must be 1-65535")
        priv = s.options.get("privilege")
        if priv is not None and str(priv).lower() not in PRIVILEGES:
            raise InvalidInput(field="bmc_options.privilege", reason=f"one of {', '.join(PRIVILEGES)}")
        suite = s.options.get("cipher_suite")
        if suite is not None and int(suite) not in CIPHER_SUITES:
            raise InvalidInput(field="bmc_options.cipher_suite", reason="pyghmi supports cipher suites 3 and 17")

    def _call(self, op: str, **args: Any) -> Any:
        opts = self.spec.options
        priv = opts.get("privilege")
        suite = opts.get("cipher_suite")
        req = {
            "op": op,
            "privilege": PRIVILEGES[str(priv).lower()] if priv is not None else None,
            "cipher_suite": int(suite) if suite is not None else None,
            **args,
        }
        return get_pool().call(self.spec, req, self.spec.timeout)

    def ping(self) -> None:
        """Log in (checks address and credentials) without changing anything."""
        self._call("ping")

    def get_power_state(self) -> PowerState:
        value = self._call("get_power")
        return {"on": PowerState.ON, "off": PowerState.OFF}.get(str(value), PowerState.UNKNOWN)

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        # IPMI chassis control (IPMI 2.0 §28.3): on=1, off=0, reset=3, soft=5.
        if action == PowerAction.SOFT_OFF:
            self._call("set_power", state="shutdown")
            return
        state = {
            PowerAction.ON: "on",
            PowerAction.OFF: "off",
            PowerAction.RESET: "reset",
            PowerAction.CYCLE: "boot",  # pyghmi: on if off, else reset
        }[action]
        self._call("set_power", state=state)

    def set_boot_device(self, setting: BootSetting) -> None:
        self._call(
            "set_bootdev",
            device=_BOOTDEV_TO_PYGHMI[setting.device],
            persist=setting.persistent,
            uefi=setting.uefi,
        )

    def get_boot_device(self) -> BootSetting | None:
        value = self._call("get_bootdev")
        dev = _BOOTDEV_FROM_PYGHMI.get(str(value.get("device")))
        if dev is None:
            return None
        return BootSetting(dev, persistent=bool(value.get("persistent")), uefi=bool(value.get("uefi")))
