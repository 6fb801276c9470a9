"""The power service: every BMC call prov makes goes through here.

Rules (issue 3):
* a global cap on calls in flight (``settings.power_concurrency``) and at most
  one call in flight per BMC endpoint (BMCs handle few sessions and serialise
  chassis commands anyway);
* every driver call is bounded by ``settings.power_call_timeout``;
* timeouts, unreachable BMCs and "node busy" are retried with exponential
  backoff plus jitter; authentication failures are never retried (a retry
  cannot fix a password and may lock the account);
* after a change the BMC is polled until it confirms the new state, or the
  confirmation deadline passes with a clear error;
* errors are classified, stored on the host (``bmc_error``, ``last_error``) and
  written to the host's history.
The BMC password is decrypted here, in memory, only for the duration of a call.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import update
from sqlmodel import Session

from provisioner import crud, secret_store
from provisioner import metrics as prov_metrics
from provisioner.db import get_engine
from provisioner.drivers.power import get_driver
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerInterface, PowerState
from provisioner.errors import (
    BmcAuthError,
    BmcBusy,
    BmcTimeout,
    DriverError,
    InvalidInput,
    ProvError,
)
from provisioner.models import Event, Host, utcnow
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Backoff between retries: BASE * 2**attempt, capped, plus up to 50 % jitter so a
# rack of BMCs that failed together does not retry in lock-step.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
# How long to wait for the BMC to confirm a change, and how often to ask: the
# first look comes soon (most chassis switch within a few hundred ms, and an
# install's next step waits on it), later ones back off to CONFIRM_INTERVAL.
CONFIRM_TIMEOUT = 60.0
CONFIRM_INTERVAL = 1.0
CONFIRM_FIRST_INTERVAL = 0.1
# Soft off: how long the OS gets to shut down before a hard off.
SOFT_OFF_TIMEOUT = 60.0

# Actions that are not idempotent: retrying after a timeout could fire twice
# (two resets), so only "busy" (the BMC says it did nothing) is retried.
_NON_IDEMPOTENT = {PowerAction.CYCLE, PowerAction.RESET}
_EXPECTED = {
    PowerAction.ON: PowerState.ON,
    PowerAction.OFF: PowerState.OFF,
    PowerAction.SOFT_OFF: PowerState.OFF,
    PowerAction.CYCLE: PowerState.ON,
    PowerAction.RESET: PowerState.ON,
}

DriverFactory = Callable[[BmcSpec], PowerInterface]


@dataclass
class PowerResult:
    host: str
    host_id: int
    ok: bool
    action: str
    power_state: str = PowerState.UNKNOWN.value
    error: str | None = None  # error code (bmc_auth, bmc_timeout ...)
    message: str = ""
    attempts: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    exc: ProvError | None = field(default=None, repr=False, compare=False)  # the classified error, if any

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, exc=None))
        out.pop("exc", None)
        return out


class PowerService:
    def __init__(self, settings: Settings | None = None, driver_factory: DriverFactory | None = None) -> None:
        self.settings = settings or get_settings()
        self.driver_factory: DriverFactory = driver_factory or get_driver
        self._cap = threading.BoundedSemaphore(max(1, self.settings.power_concurrency))
        self._locks: dict[tuple[str, str, int | None], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.confirm_timeout = CONFIRM_TIMEOUT
        self.confirm_interval = CONFIRM_INTERVAL
        self.soft_off_timeout = SOFT_OFF_TIMEOUT
        self.backoff_base = BACKOFF_BASE
        self.sleep: Callable[[float], None] = time.sleep

    # ------------------------------------------------------------------ helpers
    def _session(self) -> Session:
        return Session(get_engine(self.settings), expire_on_commit=False)

    def spec_for(self, host: Host) -> BmcSpec:
        password = secret_store.decrypt(host.bmc_password_enc, self.settings) if host.bmc_password_enc else None
        options = dict(host.bmc_options or {})
        options.setdefault("host_name", host.name)
        return BmcSpec(
            kind=host.bmc_kind,
            address=host.bmc_address or "",
            port=host.bmc_port,
            username=host.bmc_username,
            password=password,
            options=options,
            timeout=float(options.get("timeout", self.settings.power_call_timeout)),
        )

    def _bmc_lock(self, spec: BmcSpec) -> threading.Lock:
        key = (spec.kind, spec.address, spec.port)
        with self._locks_guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def _load(self, ident: int | str) -> Host:
        with self._session() as s:
            return crud.get_host(s, ident)

    def call(self, spec: BmcSpec, fn: Callable[[PowerInterface], T], *, retry: bool = True,
             counter: list[int] | None = None, op: str = "call") -> T:
        """Run ``fn(driver)`` under the caps, with retries; ``counter[0]`` counts attempts.

        Each attempt is one BMC call in the metrics (prov_bmc_calls_total and its error class,
        prov_bmc_call_duration_seconds: provisioner/metrics.py), ``op`` naming the driver method."""
        attempts = 0
        max_attempts = 1 + (max(0, self.settings.power_retries) if retry else 0)
        lock = self._bmc_lock(spec)
        while True:
            attempts += 1
            if counter is not None:
                counter[0] = attempts
            driver = self.driver_factory(spec)
            try:
                # one call per BMC in flight; a waiter gives up after the call bound
                if not lock.acquire(timeout=spec.timeout * max_attempts + 5):
                    raise BmcBusy(bmc=spec.label, reason="another request to this BMC is still running")
                try:
                    with self._cap, prov_metrics.bmc_call(spec.kind, op):
                        return fn(driver)
                finally:
                    lock.release()
            except BmcAuthError:
                raise  # never retried
            except DriverError as exc:
                if not exc.retryable or attempts >= max_attempts:
                    raise
                delay = min(BACKOFF_CAP, self.backoff_base * 2 ** (attempts - 1))
                delay += random.uniform(0, delay / 2)
                log.info("BMC %s: %s; retry %d/%d in %.1fs", spec.label, exc.code, attempts,
                         max_attempts - 1, delay)
                self.sleep(delay)
            finally:
                driver.close()

    # ------------------------------------------------------------------ records
    def _record(self, host: Host, *, power: PowerState | None = None, error: ProvError | None = None,
                event: str | None = None, message: str = "", actor: str = "system",
                task_id: int | None = None, reachable: bool | None = None) -> None:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if power is not None:
            values["power_state"] = power.value
            values["power_checked_at"] = utcnow()
        if error is not None:
            text = secret_store.mask(f"{error.code}: {error.message}")
            values["bmc_error"] = text
            values["last_error"] = text
        elif power is not None:
            values["bmc_error"] = None
        if reachable is not None:
            values["bmc_reachable"] = reachable
        with self._session() as s:
            s.execute(update(Host).where(Host.id == host.id).values(**values))  # type: ignore[arg-type]
            if event:
                s.add(Event(host_id=host.id, event=event, message=secret_store.mask(message), actor=actor,
                            task_id=task_id))
            s.commit()

    # ------------------------------------------------------------------ operations
    def get_power(self, ident: int | str, *, actor: str = "system", retry: bool = True,
                  record_change: bool = True) -> PowerResult:
        host = self._load(ident)
        assert host.id is not None
        t0 = time.monotonic()
        counter = [0]
        res = PowerResult(host=host.name, host_id=host.id, ok=False, action="status")
        try:
            spec = self.spec_for(host)
            state = self.call(spec, lambda d: d.get_power_state(), retry=retry, counter=counter,
                              op="get_power_state")
        except ProvError as exc:
            res.error, res.message, res.exc = exc.code, secret_store.mask(exc.message), exc
            self._record(host, error=exc)
        else:
            res.ok, res.power_state = True, state.value
            changed = record_change and host.power_state != state.value and state != PowerState.UNKNOWN
            self._record(
                host, power=state, reachable=True,
                event="power-change" if changed else None,
                message=f"power state changed from {host.power_state} to {state.value}", actor=actor,
            )
        res.attempts, res.seconds = counter[0], round(time.monotonic() - t0, 3)
        return res

    def _confirm(self, spec: BmcSpec, expected: PowerState, timeout: float) -> PowerState:
        deadline = time.monotonic() + timeout
        last = PowerState.UNKNOWN
        interval = min(CONFIRM_FIRST_INTERVAL, self.confirm_interval)
        while True:
            try:
                last = self.call(spec, lambda d: d.get_power_state(), retry=False, op="get_power_state")
            except (BmcTimeout, BmcBusy):
                last = PowerState.UNKNOWN  # a BMC may stop answering briefly during a reset
            if last == expected:
                return last
            if time.monotonic() >= deadline:
                raise BmcTimeout(
                    f"BMC {spec.label}: power did not become {expected.value} within {timeout:g}s "
                    f"(still {last.value})", bmc=spec.label, seconds=timeout)
            self.sleep(interval)
            interval = min(interval * 2, self.confirm_interval)

    def power_action(self, ident: int | str, action: PowerAction | str, *, wait: bool = True,
                     actor: str = "system", task_id: int | None = None) -> PowerResult:
        try:
            action = PowerAction(action)
        except ValueError:
            raise InvalidInput(field="action", reason=f"one of {', '.join(a.value for a in PowerAction)}") from None
        host = self._load(ident)
        assert host.id is not None
        t0 = time.monotonic()
        counter = [0]
        res = PowerResult(host=host.name, host_id=host.id, ok=False, action=action.value)
        try:
            spec = self.spec_for(host)
            self.driver_factory(spec).validate()
            t_bmc = time.monotonic()
            retry_ok = action not in _NON_IDEMPOTENT
            try:
                self.call(spec, lambda d: d.set_power_state(action, soft_timeout=self.soft_off_timeout),
                          retry=retry_ok, counter=counter, op="set_power_state")
            except BmcBusy:
                if retry_ok:
                    raise
                self.call(spec, lambda d: d.set_power_state(action), retry=True, counter=counter,
                          op="set_power_state")
            state = PowerState.UNKNOWN
            if wait:
                expected = _EXPECTED[action]
                if action == PowerAction.SOFT_OFF:
                    try:
                        state = self._confirm(spec, expected, self.soft_off_timeout)
                    except BmcTimeout:
                        # the OS did not shut down in time: hard off, as promised
                        self.call(spec, lambda d: d.set_power_state(PowerAction.OFF), counter=counter,
                                  op="set_power_state")
                        state = self._confirm(spec, expected, self.confirm_timeout)
                        res.details["hard_off_after_soft"] = True
                else:
                    state = self._confirm(spec, expected, self.confirm_timeout)
        except ProvError as exc:
            if exc.code == "operator_action":  # manual driver: recorded, nothing else to do
                res.ok, res.message = True, exc.message
                self._record(host, event="power", message=f"power {action.value} requested from the operator: "
                             f"{exc.message}", actor=actor, task_id=task_id)
            else:
                res.error, res.message, res.exc = exc.code, secret_store.mask(exc.message), exc
                self._record(host, error=exc, event="power-error",
                             message=f"power {action.value} failed: {exc.message}", actor=actor, task_id=task_id)
        else:
            res.ok, res.power_state = True, state.value
            how = f"confirmed {state.value}" if wait else "requested (not confirmed)"
            # the BMC's share of the time (calls, retries, confirmation polls): a slow BMC shows in
            # the history, and bench/rack tells the controller's own time from the BMC's with it
            self._record(host, power=state if wait else None, reachable=True, event="power",
                         message=f"power {action.value}: {how} (BMC {time.monotonic() - t_bmc:.2f} s)",
                         actor=actor, task_id=task_id)
        res.attempts, res.seconds = counter[0], round(time.monotonic() - t0, 3)
        return res

    def set_boot_device(self, ident: int | str, setting: BootSetting, *, actor: str = "system",
                        task_id: int | None = None) -> PowerResult:
        host = self._load(ident)
        assert host.id is not None
        t0 = time.monotonic()
        counter = [0]
        res = PowerResult(host=host.name, host_id=host.id, ok=False, action="boot-device",
                          details={"device": setting.device.value, "persistent": setting.persistent,
                                   "uefi": setting.uefi})
        what = (f"boot device {setting.device.value} ({'persistent' if setting.persistent else 'once'}, "
                f"{'UEFI' if setting.uefi else 'BIOS'})")
        try:
            spec = self.spec_for(host)
            self.driver_factory(spec).validate()
            t_bmc = time.monotonic()
            self.call(spec, lambda d: d.set_boot_device(setting), counter=counter, op="set_boot_device")
        except ProvError as exc:
            if exc.code == "operator_action":
                res.ok, res.message = True, exc.message
                self._record(host, event="boot-device", message=f"{what} requested from the operator",
                             actor=actor, task_id=task_id)
            else:
                res.error, res.message, res.exc = exc.code, secret_store.mask(exc.message), exc
                self._record(host, error=exc, event="power-error", message=f"set {what} failed: {exc.message}",
                             actor=actor, task_id=task_id)
        else:
            res.ok = True
            self._record(host, event="boot-device", message=f"set {what} (BMC {time.monotonic() - t_bmc:.2f} s)",
                         actor=actor, task_id=task_id)
        res.attempts, res.seconds = counter[0], round(time.monotonic() - t0, 3)
        return res

    # ------------------------------------------------------------------ rack fan-out
    def fan_out(self, host_ids: list[int], fn: Callable[[int], PowerResult],
                progress: Callable[[int, int, PowerResult], None] | None = None) -> list[PowerResult]:
        """Run ``fn`` for every host at once (the caps above still apply); results in input order."""
        if not host_ids:
            return []
        results: dict[int, PowerResult] = {}
        done = 0
        done_lock = threading.Lock()

        def one(hid: int) -> None:
            nonlocal done
            try:
                r = fn(hid)
            except ProvError as exc:
                r = PowerResult(host=str(hid), host_id=hid, ok=False, action="?", error=exc.code,
                                message=secret_store.mask(exc.message))
            with done_lock:
                results[hid] = r
                done += 1
                n = done
            if progress is not None:
                progress(n, len(host_ids), r)

        workers = max(1, min(len(host_ids), self.settings.power_concurrency))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prov-power") as pool:
            list(pool.map(one, host_ids))
        return [results[h] for h in host_ids]

    def rack_ref(self, rack: int | str) -> tuple[int, str]:
        """The rack's id and name, from a short session (callers then wait on BMCs with none open)."""
        with self._session() as s:
            r = crud.get_rack(s, rack)
            assert r.id is not None
            return r.id, r.name

    def rack_host_ids(self, rack: int | str) -> list[int]:
        with self._session() as s:
            r = crud.get_rack(s, rack)
            assert r.id is not None
            return [h.id for h in crud.rack_hosts(s, rack_id=r.id) if h.id is not None]


_services: dict[int, PowerService] = {}
_services_lock = threading.Lock()


def get_service(settings: Settings | None = None) -> PowerService:
    settings = settings or get_settings()
    with _services_lock:
        svc = _services.get(id(settings))
        if svc is None:
            svc = _services[id(settings)] = PowerService(settings)
        return svc


def reset_services() -> None:
    with _services_lock:
        _services.clear()


# --------------------------------------------------------------------------- module API
# Single-host functions raise the classified error (after recording it), so a
# workflow can simply call them; the rack functions return per-host results.
def _raise(res: PowerResult) -> PowerResult:
    if res.exc is not None:
        raise res.exc
    return res


def power_action(host_id: int | str, action: PowerAction | str, *, settings: Settings | None = None,
                 wait: bool = True, actor: str = "system", task_id: int | None = None) -> PowerResult:
    return _raise(get_service(settings).power_action(host_id, action, wait=wait, actor=actor, task_id=task_id))


def set_boot_device(host_id: int | str, setting: BootSetting | None = None, *, settings: Settings | None = None,
                    device: BootDevice | str | None = None, persistent: bool = False, uefi: bool = False,
                    actor: str = "system", task_id: int | None = None) -> PowerResult:
    """``setting`` or (``device``, ``persistent``, ``uefi``)."""
    if setting is None:
        if device is None:
            raise InvalidInput(field="device", reason="a boot device is required")
        setting = BootSetting(BootDevice(device), persistent=persistent, uefi=uefi)
    return _raise(get_service(settings).set_boot_device(host_id, setting, actor=actor, task_id=task_id))


def get_power(host_id: int | str, *, settings: Settings | None = None, actor: str = "system",
              retry: bool = True) -> PowerResult:
    return _raise(get_service(settings).get_power(host_id, actor=actor, retry=retry))


def rack_ref(rack: int | str, *, settings: Settings | None = None) -> tuple[int, str]:
    return get_service(settings).rack_ref(rack)


ProgressFn = Callable[[int, int, PowerResult], None]


def rack_get_power(rack: int | str, *, settings: Settings | None = None,
                   progress: ProgressFn | None = None) -> list[PowerResult]:
    svc = get_service(settings)
    return svc.fan_out(svc.rack_host_ids(rack), lambda h: svc.get_power(h), progress)


def rack_power_action(rack: int | str, action: PowerAction | str, *, settings: Settings | None = None,
                      wait: bool = True, actor: str = "system", task_id: int | None = None,
                      progress: ProgressFn | None = None) -> list[PowerResult]:
    svc = get_service(settings)
    return svc.fan_out(svc.rack_host_ids(rack),
                       lambda h: svc.power_action(h, action, wait=wait, actor=actor, task_id=task_id), progress)


def rack_set_boot_device(rack: int | str, setting: BootSetting, *, settings: Settings | None = None,
                         actor: str = "system", task_id: int | None = None,
                         progress: ProgressFn | None = None) -> list[PowerResult]:
    svc = get_service(settings)
    return svc.fan_out(svc.rack_host_ids(rack),
                       lambda h: svc.set_boot_device(h, setting, actor=actor, task_id=task_id), progress)
