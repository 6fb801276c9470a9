"""An in-memory BMC for tests: power state, boot device, a call log, injected delays and failures.

Not a kind the API offers (it is not in ``DRIVERS``: a host enrolled through
the API can never be driven by it). Tests build it directly, usually through a
``FakeFleet``, whose ``driver`` is a power-service driver factory::

    fleet = FakeFleet()
    svc = PowerService(settings, driver_factory=fleet.driver)
    bmc = fleet.machine("127.0.0.1", 1001)   # the BMC a host with that address/port reaches
    bmc.failures = [BmcTimeout(bmc="x", seconds=1)]   # the next call times out

The power service builds a new driver for every call, so a machine's state
lives in its ``FakeMachine``, shared by every driver built for that BMC.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from provisioner.drivers.power.base import BmcSpec, BootSetting, PowerAction, PowerInterface, PowerState


@dataclass
class FakeMachine:
    """One fake BMC and the machine behind it."""

    power: PowerState = PowerState.OFF
    boot: BootSetting | None = None
    calls: list[str] = field(default_factory=list)  # "get", "set:<action>", "boot", in order
    failures: list[Exception] = field(default_factory=list)  # raised by the next calls, one each
    delay: float = 0.0  # seconds every call takes
    apply_after: int = 0  # status polls before a requested change shows; < 0: soft-off is ignored
    in_flight: int = 0
    max_in_flight: int = 0
    _pending: PowerState | None = None
    _polls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class FakeFleet:
    """Fake BMCs by address (``BmcSpec.label``), and how many calls were in flight at once across them."""

    def __init__(self) -> None:
        self.machines: dict[str, FakeMachine] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def machine(self, address: str, port: int | None = None) -> FakeMachine:
        label = BmcSpec(kind="fake", address=address, port=port).label
        with self.lock:
            return self.machines.setdefault(label, FakeMachine())

    def driver(self, spec: BmcSpec) -> FakePower:
        return FakePower(spec, machine=self.machine(spec.address, spec.port), fleet=self)


class FakePower(PowerInterface):
    def __init__(self, spec: BmcSpec, *, machine: FakeMachine | None = None, fleet: FakeFleet | None = None) -> None:
        super().__init__(spec)
        self.machine = machine or FakeMachine()
        self.fleet = fleet

    def validate(self) -> None:
        """Any address will do: nothing is reached."""

    def _call(self, name: str) -> None:
        m, fleet = self.machine, self.fleet
        with m.lock:
            m.calls.append(name)
            m.in_flight += 1
            m.max_in_flight = max(m.max_in_flight, m.in_flight)
        if fleet is not None:
            with fleet.lock:
                fleet.in_flight += 1
                fleet.max_in_flight = max(fleet.max_in_flight, fleet.in_flight)
        try:
            if m.delay:
                time.sleep(m.delay)
            with m.lock:
                failure = m.failures.pop(0) if m.failures else None
            if failure is not None:
                raise failure
        finally:
            with m.lock:
                m.in_flight -= 1
            if fleet is not None:
                with fleet.lock:
                    fleet.in_flight -= 1

    def get_power_state(self) -> PowerState:
        self._call("get")
        m = self.machine
        with m.lock:
            if m._pending is not None:
                m._polls += 1
                if m._polls > m.apply_after:
                    m.power, m._pending = m._pending, None
            return m.power

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        self._call(f"set:{action.value}")
        m = self.machine
        if action == PowerAction.SOFT_OFF and m.apply_after < 0:
            return  # the OS ignores the ACPI request
        target = PowerState.OFF if action in (PowerAction.OFF, PowerAction.SOFT_OFF) else PowerState.ON
        with m.lock:
            m._pending, m._polls = target, 0

    def set_boot_device(self, setting: BootSetting) -> None:
        self._call("boot")
        self.machine.boot = setting

    def get_boot_device(self) -> BootSetting | None:
        return self.machine.boot
