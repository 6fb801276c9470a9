"""Power for guests enrolled as hosts (bmc kind ``libvirt``, like MAAS's virsh power type).

Options: ``uri`` (``qemu:///system``, ``qemu+ssh://root@kvm1/system`` ...) and
``domain`` (the guest's name; defaults to the BMC address). All libvirt calls go
through ``provisioner.drivers.virt.libvirt`` so ``import libvirt`` stays in one
module. The boot device is the domain's ``<os><boot dev=...>`` order; libvirt has
no one-time override, so a non-persistent setting is applied like a persistent
one (as VirtualBMC does) and the install workflow sets it back to disk.
"""

from __future__ import annotations

from provisioner.drivers.power.base import BootDevice, BootSetting, PowerAction, PowerInterface, PowerState
from provisioner.drivers.virt.libvirt import VirtConnection, open_connection
from provisioner.errors import BmcError, BmcUnreachable, BmcUnsupported, InvalidInput, NotFound, VirtError

# BootDevice -> libvirt <boot dev>; the rest of the order follows so the guest still boots.
_BOOT_ORDER = {
    BootDevice.PXE: ["network", "hd"],
    BootDevice.DISK: ["hd", "network"],
    BootDevice.CDROM: ["cdrom", "hd"],
}
_FROM_LIBVIRT = {"network": BootDevice.PXE, "hd": BootDevice.DISK, "cdrom": BootDevice.CDROM}


class LibvirtPower(PowerInterface):
    kind = "libvirt"

    @property
    def uri(self) -> str:
        return str(self.spec.options.get("uri") or "qemu:///system")

    @property
    def domain(self) -> str:
        return str(self.spec.options.get("domain") or self.spec.address)

    def validate(self) -> None:
        uri = self.uri
        if not any(uri.startswith(p) for p in ("qemu:", "qemu+ssh:", "qemu+unix:", "qemu+tcp:", "test:")):
            raise InvalidInput(field="bmc_options.uri", reason=f"{uri!r} is not a libvirt QEMU URI")
        if not self.domain:
            raise InvalidInput(field="bmc_options.domain", reason="the guest's domain name is required")

    def _conn(self) -> VirtConnection:
        try:
            return open_connection(self.uri)
        except VirtError as exc:
            raise BmcUnreachable(bmc=f"{self.uri}#{self.domain}", reason=exc.message) from None

    def _call(self, fn_name: str, *args: object, **kwargs: object) -> object:
        label = f"{self.uri}#{self.domain}"
        conn = self._conn()
        try:
            return getattr(conn, fn_name)(self.domain, *args, **kwargs)
        except NotFound:
            raise BmcError(bmc=label, reason=f"no guest named {self.domain!r}") from None
        except VirtError as exc:
            raise BmcError(bmc=label, reason=exc.message) from None
        finally:
            conn.close()

    def get_power_state(self) -> PowerState:
        state = self._call("state")
        if state in ("running", "blocked", "paused", "pmsuspended", "shutdown"):
            return PowerState.ON
        if state in ("shutoff", "crashed"):
            return PowerState.OFF
        return PowerState.UNKNOWN

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        if action == PowerAction.ON:
            self._call("start")
        elif action == PowerAction.OFF:
            self._call("destroy")
        elif action == PowerAction.SOFT_OFF:
            self._call("shutdown", timeout=soft_timeout)
        elif action == PowerAction.RESET:
            if self.get_power_state() == PowerState.ON:
                self._call("reset")
            else:
                self._call("start")
        elif action == PowerAction.CYCLE:
            # off then on: a fresh QEMU process also picks up a changed boot order
            self._call("destroy")
            self._call("start")
        else:  # pragma: no cover - enum exhausted
            raise BmcUnsupported(bmc=self.domain, operation=str(action))

    def set_boot_device(self, setting: BootSetting) -> None:
        if setting.device == BootDevice.DEFAULT:
            return
        order = _BOOT_ORDER.get(setting.device)
        if order is None:
            raise BmcUnsupported(bmc=self.domain, operation=f"boot device {setting.device}")
        self._call("set_boot_order", order)

    def get_boot_device(self) -> BootSetting | None:
        order = self._call("boot_order")
        if not isinstance(order, list) or not order:
            return None
        dev = _FROM_LIBVIRT.get(order[0])
        return BootSetting(dev, persistent=True) if dev else None
