"""Redfish power control through sushy (the only module that imports sushy).

Options (``bmc_options``):
  ``scheme``     https (default) or http
  ``verify_tls`` true (default); false is an explicit, logged opt-out
  ``ca_path``    CA bundle (file or directory) used to verify the BMC's certificate
  ``system_id``  which ComputerSystem to drive (default: the first member)
  ``root_prefix`` Redfish service root (default /redfish/v1/, DSP0266 §7.4)

Every call runs in a worker thread with the spec's deadline; sushy's own
request timeouts are set to the same bound so an abandoned worker ends soon.
Errors are classified from what happened on the wire: the socket error under
sushy's ConnectionError (refused, no route, name, TLS), a read that timed out,
or the HTTP status (401/403 refused credentials, DSP0266 §8.6).
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sexc

from provisioner.drivers.power.base import (
    BmcSpec,
    BootDevice,
    BootSetting,
    PowerAction,
    PowerInterface,
    PowerState,
)
from provisioner.errors import (
    BmcAuthError,
    BmcBusy,
    BmcError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    DriverError,
    InvalidInput,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_POWER = {
    sushy.PowerState.ON: PowerState.ON,
    sushy.PowerState.POWERING_OFF: PowerState.ON,  # still on until it is off
    sushy.PowerState.OFF: PowerState.OFF,
    sushy.PowerState.POWERING_ON: PowerState.OFF,
}
_TARGET = {
    BootDevice.PXE: sushy.BootSource.PXE,
    BootDevice.DISK: sushy.BootSource.HDD,
    BootDevice.CDROM: sushy.BootSource.CD,
    BootDevice.BIOS: sushy.BootSource.BIOS_SETUP,
    BootDevice.DEFAULT: sushy.BootSource.NONE,
}
_FROM_TARGET = {v: k for k, v in _TARGET.items()}

_executor = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="prov-redfish")
_executor_lock = threading.Lock()


# errno under a failed connect -> what happened on the wire
_SOCKET_ERRORS = {
    errno.ECONNREFUSED: "connection refused (TCP)",
    errno.ECONNRESET: "connection reset by the BMC",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "no route to the BMC's network",
    errno.EHOSTDOWN: "host down",
}


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything under it: sushy wraps requests, which wraps urllib3, which wraps the socket."""
    found: list[BaseException] = []
    stack: list[object] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or any(e is f for f in found):
            continue
        found.append(e)
        stack += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return found


def _wire_reason(exc: BaseException) -> tuple[str, str]:
    """A sushy ConnectionError -> ("timeout" | "unreachable", what happened)."""
    causes = _causes(exc)
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes):
        return "unreachable", "TLS verification failed (the BMC's certificate is not trusted: bmc_options.ca_path)"
    if any(isinstance(e, ssl.SSLError | requests.exceptions.SSLError) for e in causes):
        return "unreachable", "TLS handshake failed (is the BMC serving https on this port?)"
    for e in causes:
        if isinstance(e, socket.gaierror):
            return "unreachable", "cannot resolve the BMC's name"
        if isinstance(e, OSError) and e.errno in _SOCKET_ERRORS:
            return "unreachable", _SOCKET_ERRORS[e.errno]
    for e in causes:
        if isinstance(e, requests.exceptions.Timeout | TimeoutError | socket.timeout):
            return "timeout", "no answer"
    return "unreachable", "connection failed"


def _translate(exc: BaseException, spec: BmcSpec, op: str) -> DriverError:
    bmc = spec.label
    if isinstance(exc, sexc.AccessError):
        status = getattr(exc, "status_code", None)
        if status == 403:
            reason = "HTTP 403: the account may not do this"
            return BmcAuthError(f"BMC {bmc}: access refused ({reason})", bmc=bmc, reason=reason)
        return BmcAuthError(f"BMC {bmc}: user or password refused (HTTP {status})", bmc=bmc, reason=f"HTTP {status}")
    if isinstance(exc, sexc.ConnectionError):
        kind, reason = _wire_reason(exc)
        if kind == "timeout":
            return BmcTimeout(bmc=bmc, seconds=spec.timeout)
        return BmcUnreachable(f"BMC {bmc}: {reason}", bmc=bmc, reason=reason)
    if isinstance(exc, sexc.HTTPError):
        status = getattr(exc, "status_code", None)
        if status in (503, 429):  # DSP0266 §8.2.6: service busy, retry later
            return BmcBusy(bmc=bmc, reason=f"HTTP {status}")
        if status in (400, 405, 501) or isinstance(exc, sexc.ResourceNotFoundError):
            return BmcUnsupported(bmc=bmc, operation=op, reason=f"HTTP {status}")
        return BmcError(bmc=bmc, reason=f"HTTP {status}: {getattr(exc, 'message', '')}"[:300])
    if isinstance(exc, sexc.MissingActionError | sexc.InvalidParameterValueError | sexc.MissingAttributeError):
        return BmcUnsupported(bmc=bmc, operation=op, reason=str(exc)[:300])
    if isinstance(exc, sexc.SushyError):
        return BmcError(bmc=bmc, reason=str(exc)[:300])
    return BmcError(bmc=bmc, reason=f"{exc.__class__.__name__}")


class _OneAttempt(sushy_connector.Connector):
    """A sushy connector that tries each request once: the power service owns retries.

    sushy reads ``server_side_retries`` both as the count of 5xx retries and, with
    0 meaning 3, as the count of transport attempts with 2 s sleeps in between
    (a closed port then takes 4 s to fail). 1 transport attempt, 0 retries of 5xx.
    """

    def _op(self, method: str, path: str = "", data: Any = None, headers: Any = None,
            blocking: bool = False, timeout: Any = None, server_side_retries_left: int | None = None,
            **kwargs: Any) -> Any:
        return super()._op(method, path, data=data, headers=headers, blocking=blocking, timeout=timeout,
                           server_side_retries_left=0 if server_side_retries_left is None
                           else server_side_retries_left, **kwargs)


class RedfishPower(PowerInterface):
    def __init__(self, spec: BmcSpec) -> None:
        super().__init__(spec)
        self._conn: Any = None
        self._system: Any = None

    # ------------------------------------------------------------------ setup
    def _verify(self) -> bool | str:
        opts = self.spec.options
        ca = opts.get("ca_path")
        if ca:
            return str(ca)
        verify = opts.get("verify_tls", True)
        if isinstance(verify, str):
            verify = verify.strip().lower() not in ("0", "false", "no", "off")
        if not verify:
            log.warning("BMC %s: TLS verification disabled by bmc_options.verify_tls", self.spec.label)
        return bool(verify)

    def base_url(self) -> str:
        opts = self.spec.options
        scheme = str(opts.get("scheme", "https"))
        port = f":{self.spec.port}" if self.spec.port else ""
        return f"{scheme}://{self.spec.address}{port}"

    def validate(self) -> None:
        s = self.spec
        if not s.address:
            raise InvalidInput(field="bmc_address", reason="required for Redfish")
        if not s.username or s.password is None:
            raise InvalidInput(field="bmc_username", reason="Redfish needs a username and password")
        scheme = s.options.get("scheme", "https")
        if scheme not in ("http", "https"):
            raise InvalidInput(field="bmc_options.scheme", reason="http or https")
        ca = s.options.get("ca_path")
        if ca and not os.path.exists(str(ca)):
            raise InvalidInput(field="bmc_options.ca_path", reason=f"{ca} does not exist")

    def _connect(self) -> Any:
        if self._system is not None:
            return self._system
        s = self.spec
        bound = max(1, int(s.timeout))
        conn = sushy.Sushy(
            self.base_url(),
            root_prefix=str(s.options.get("root_prefix", "/redfish/v1/")),
            auth=sushy_auth.BasicAuth(username=s.username, password=s.password),
            connector=_OneAttempt(self.base_url(), verify=self._verify(), server_side_retries=1,
                                  default_request_timeout=bound, connect_timeout=bound),
        )
        system_id = s.options.get("system_id")
        if system_id:
            path = str(system_id)
            if not path.startswith("/"):
                path = f"{conn.get_system_collection().path.rstrip('/')}/{path}"
            system = conn.get_system(path)
        else:
            members = conn.get_system_collection().members_identities
            if not members:
                raise BmcError(bmc=s.label, reason="no ComputerSystem in the Redfish service")
            system = conn.get_system(sorted(members)[0])
        self._conn, self._system = conn, system
        return system

    def _bounded(self, op: str, fn: Callable[[Any], T]) -> T:
        def run() -> T:
            try:
                system = self._connect()
                system.refresh(force=True) if op != "connect" else None
                return fn(system)
            except DriverError:
                raise
            except Exception as exc:
                raise _translate(exc, self.spec, op) from None

        fut = _executor.submit(run)
        try:
            return fut.result(timeout=self.spec.timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise BmcTimeout(bmc=self.spec.label, seconds=self.spec.timeout) from None

    # ------------------------------------------------------------------ interface
    def ping(self) -> None:
        self._bounded("connect", lambda system: None)

    def get_power_state(self) -> PowerState:
        return self._bounded("get power", lambda system: _POWER.get(system.power_state, PowerState.UNKNOWN))

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        def run(system: Any) -> None:
            allowed = system.get_allowed_reset_system_values()
            if action == PowerAction.CYCLE:
                # PowerCycle when the BMC offers it; else ForceRestart when on, On when off.
                if sushy.ResetType.POWER_CYCLE in allowed:
                    reset = sushy.ResetType.POWER_CYCLE
                elif system.power_state == sushy.PowerState.OFF:
                    reset = sushy.ResetType.ON
                else:
                    reset = sushy.ResetType.FORCE_RESTART
            else:
                reset = {
                    PowerAction.ON: sushy.ResetType.ON,
                    PowerAction.OFF: sushy.ResetType.FORCE_OFF,
                    PowerAction.SOFT_OFF: sushy.ResetType.GRACEFUL_SHUTDOWN,
                    PowerAction.RESET: sushy.ResetType.FORCE_RESTART,
                }[action]
            if allowed and reset not in allowed:
                raise BmcUnsupported(bmc=self.spec.label, operation=f"reset type {reset.value}")
            system.reset_system(reset)

        self._bounded(f"power {action.value}", run)

    def set_boot_device(self, setting: BootSetting) -> None:
        def run(system: Any) -> None:
            enabled = (sushy.BootSourceOverrideEnabled.CONTINUOUS if setting.persistent
                       else sushy.BootSourceOverrideEnabled.ONCE)
            mode = sushy.BootSourceOverrideMode.UEFI if setting.uefi else sushy.BootSourceOverrideMode.LEGACY
            target = _TARGET[setting.device]
            if setting.device == BootDevice.DEFAULT:
                system.set_system_boot_options(target=target, enabled=sushy.BootSourceOverrideEnabled.DISABLED)
                return
            # Send the mode only when it changes: switching modes can make firmware
            # reconfigure (and some emulators cannot change it at all).
            # A BMC that reports no mode is treated as Legacy (the Redfish default).
            current = getattr(system.boot, "mode", None) or sushy.BootSourceOverrideMode.LEGACY
            system.set_system_boot_options(target=target, enabled=enabled, mode=None if current == mode else mode)

        self._bounded("set boot device", run)

    def get_boot_device(self) -> BootSetting | None:
        def run(system: Any) -> BootSetting | None:
            boot = system.boot
            dev = _FROM_TARGET.get(boot.target)
            if dev is None or boot.enabled == sushy.BootSourceOverrideEnabled.DISABLED:
                return None
            return BootSetting(
                dev,
                persistent=boot.enabled == sushy.BootSourceOverrideEnabled.CONTINUOUS,
                uefi=boot.mode == sushy.BootSourceOverrideMode.UEFI,
            )

        return self._bounded("get boot device", run)

    def close(self) -> None:
        conn, self._conn, self._system = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a dead connection must not fail the caller
                log.debug("closing Redfish connection to %s failed", self.spec.label)
