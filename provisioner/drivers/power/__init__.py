"""Power drivers: one ``PowerInterface`` implementation per BMC kind, chosen by name.

``DRIVERS`` maps each kind to a loader that imports its module when first
asked, so a controller that never talks Redfish never imports sushy (and each
vendor library stays in its one module). ``fake`` (fake.py) is not a kind the
API offers: tests build ``FakePower`` directly and hand it to the power service
as its driver factory.
"""

from __future__ import annotations

from collections.abc import Callable

from provisioner.drivers.power.base import BmcSpec, PowerInterface
from provisioner.errors import InvalidInput


def _ipmi() -> type[PowerInterface]:
    from provisioner.drivers.power.ipmi import IpmiPower

    return IpmiPower


def _redfish() -> type[PowerInterface]:
    from provisioner.drivers.power.redfish import RedfishPower

    return RedfishPower


def _manual() -> type[PowerInterface]:
    from provisioner.drivers.power.manual import ManualPower

    return ManualPower


def _libvirt() -> type[PowerInterface]:
    from provisioner.drivers.power.libvirt import LibvirtPower

    return LibvirtPower


# kind -> the driver class, imported on first use
DRIVERS: dict[str, Callable[[], type[PowerInterface]]] = {
    "ipmi": _ipmi,
    "redfish": _redfish,
    "manual": _manual,
    "libvirt": _libvirt,
}


def available_kinds() -> list[str]:
    return list(DRIVERS)


def get_driver(spec: BmcSpec) -> PowerInterface:
    load = DRIVERS.get(spec.kind)
    if load is None:
        known = ", ".join(available_kinds())
        raise InvalidInput(field="bmc_kind", reason=f"unknown BMC kind {spec.kind!r} (known: {known})")
    return load()(spec)
