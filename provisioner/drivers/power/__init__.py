"""Power drivers: one ``PowerInterface`` implementation per BMC kind, chosen by name.

``get_driver(spec)`` imports the implementing module lazily, so a controller
that never talks Redfish never imports sushy (and each vendor library stays in
its one module). ``libvirt`` is looked up only if ``drivers/power/libvirt.py``
exists (it is provided with the KVM work).
"""

from __future__ import annotations

import importlib
import importlib.util

from provisioner.drivers.power.base import BmcSpec, PowerInterface
from provisioner.errors import InvalidInput

# kind -> (module, class name)
DRIVERS: dict[str, tuple[str, str]] = {
    "ipmi": ("provisioner.drivers.power.ipmi", "IpmiPower"),
    "redfish": ("provisioner.drivers.power.redfish", "RedfishPower"),
    "manual": ("provisioner.drivers.power.manual", "ManualPower"),
    "libvirt": ("provisioner.drivers.power.libvirt", "LibvirtPower"),
}


def available_kinds() -> list[str]:
    kinds = []
    for kind, (module, _cls) in DRIVERS.items():
        if kind == "libvirt" and importlib.util.find_spec(module) is None:
            continue
        kinds.append(kind)
    return kinds


def get_driver(spec: BmcSpec) -> PowerInterface:
    entry = DRIVERS.get(spec.kind)
    if entry is None or spec.kind not in available_kinds():
        known = ", ".join(available_kinds())
        raise InvalidInput(field="bmc_kind", reason=f"unknown BMC kind {spec.kind!r} (known: {known})")
    module = importlib.import_module(entry[0])
    cls = getattr(module, entry[1], None)
    if cls is None:  # libvirt module present under another class name
        candidates = [v for v in vars(module).values()
                      if isinstance(v, type) and issubclass(v, PowerInterface) and v is not PowerInterface]
        if not candidates:
            raise InvalidInput(field="bmc_kind", reason=f"{spec.kind} power driver not available")
        cls = candidates[0]
    driver: PowerInterface = cls(spec)
    return driver
