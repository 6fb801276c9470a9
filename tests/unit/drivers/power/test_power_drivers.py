"""Driver registry, validation, manual driver, error classification, and IPMI against pyghmi's Bmc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.drivers.power import available_kinds, get_driver
from provisioner.drivers.power import ipmi as ipmi_mod
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerState
from provisioner.drivers.power.ipmi import IpmiPower
from provisioner.drivers.power.manual import ManualPower, OperatorActionRequired
from provisioner.drivers.power.redfish import RedfishPower
from provisioner.errors import BmcAuthError, BmcTimeout, InvalidInput
from tests.support.power import free_udp_port

HERE = Path(__file__).parent


def spec(kind: str = "ipmi", **kw: object) -> BmcSpec:
    base: dict[str, object] = {"kind": kind, "address": "127.0.0.1", "port": 623, "username": "admin",
                               "password": "pw-secret-1"}
    base.update(kw)
    return BmcSpec(**base)  # type: ignore[arg-type]


def test_registry_knows_the_kinds() -> None:
    assert {"ipmi", "redfish", "manual"} <= set(available_kinds())
    assert isinstance(get_driver(spec("ipmi")), IpmiPower)
    assert isinstance(get_driver(spec("redfish")), RedfishPower)
    assert isinstance(get_driver(spec("manual")), ManualPower)
    with pytest.raises(InvalidInput):
        get_driver(spec("telnet"))


@pytest.mark.parametrize(
    ("kind", "changes", "field"),
    [
        ("ipmi", {"username": None}, "bmc_username"),
        ("ipmi", {"password": None}, "bmc_password"),
        ("ipmi", {"options": {"privilege": "god"}}, "bmc_options.privilege"),
        ("ipmi", {"options": {"cipher_suite": 1}}, "bmc_options.cipher_suite"),
        ("ipmi", {"port": 70000}, "bmc_port"),
        ("redfish", {"options": {"scheme": "ftp"}}, "bmc_options.scheme"),
        ("redfish", {"options": {"ca_path": "/nonexistent/ca.pem"}}, "bmc_options.ca_path"),
    ],
)
def test_validate_rejects_bad_parameters_without_touching_the_bmc(kind: str, changes: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        get_driver(spec(kind, **changes)).validate()
    assert err.value.details["field"] == field
    assert "pw-secret-1" not in err.value.message


def test_validate_accepts_good_parameters() -> None:
    get_driver(spec("ipmi", options={"privilege": "operator", "cipher_suite": 3})).validate()
    get_driver(spec("redfish", options={"verify_tls": False})).validate()


def test_redfish_tls_verification_defaults_on(tmp_path: Path) -> None:
    assert RedfishPower(spec("redfish"))._verify() is True
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert RedfishPower(spec("redfish", options={"ca_path": str(ca)}))._verify() == str(ca)
    assert RedfishPower(spec("redfish", options={"verify_tls": "false"}))._verify() is False
    assert RedfishPower(spec("redfish", port=8443)).base_url() == "https://127.0.0.1:8443"


def test_manual_driver_asks_the_operator() -> None:
    d = get_driver(spec("manual", options={"host_name": "web01"}))
    assert d.get_power_state() == PowerState.UNKNOWN
    with pytest.raises(OperatorActionRequired, match="power on host web01"):
        d.set_power_state(PowerAction.ON)
    with pytest.raises(OperatorActionRequired, match="pxe"):
        d.set_boot_device(BootSetting(BootDevice.PXE))


@pytest.mark.parametrize(
    ("text", "code", "kind"),
    [
        ("Incorrect password provided", 0, "auth"),
        ("Unauthorized name", 0, "auth"),
        ("timeout", 0, "timeout"),
        ("Session no longer connected", 0, "unreachable"),
        ("Unable to establish IPMI v2 / RMCP+ session", 0, "unreachable"),
        ("Node busy", 0xC0, "busy"),
        ("Invalid command", 0xC1, "unsupported"),
        ("Unspecified error", 0xFF, "busy"),
        ("weird", 0x80, "error"),
    ],
)
def test_ipmi_error_classification(text: str, code: int, kind: str) -> None:
    class Fake(Exception):
        def __init__(self) -> None:
            super().__init__(text)
            self.ipmicode = code

    assert ipmi_mod._classify(Fake())[0] == kind


@pytest.fixture(scope="module")
def fake_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    d = tmp_path_factory.mktemp("fakebmc")
    port = free_udp_port()
    creds = d / "creds"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"admin:pw-secret-1")
    os.close(fd)
    log = d / "log"
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_bmc.py"), str(port), str(creds), str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield port, log
    finally:
        proc.kill()
        proc.wait(5)
        ipmi_mod.shutdown_pool()


def test_ipmi_driver_against_pyghmi_bmc(fake_bmc: tuple[int, Path]) -> None:
    port, log = fake_bmc
    # pyghmi's Bmc always answers cipher suite 3 (docs/field-notes.md, "BMC simulators"): propose it directly.
    d = IpmiPower(spec(port=port, options={"cipher_suite": 3}, timeout=5))
    d.validate()
    deadline = time.monotonic() + 5
    while True:  # the subprocess may still be starting
        try:
            assert d.get_power_state() == PowerState.OFF
            break
        except BmcTimeout:
            if time.monotonic() > deadline:
                raise
    d.set_power_state(PowerAction.ON)
    assert d.get_power_state() == PowerState.ON
    d.set_boot_device(BootSetting(BootDevice.PXE))
    assert log.read_text().splitlines()[-2:] == ["power on", "boot network"]
    bad = IpmiPower(spec(port=port, password="wrong-pw", options={"cipher_suite": 3}, timeout=5))
    with pytest.raises(BmcAuthError) as err:
        bad.get_power_state()
    assert "wrong-pw" not in str(err.value)


def test_ipmi_dead_port_times_out_within_bound() -> None:
    d = IpmiPower(spec(port=free_udp_port(), timeout=0.3))
    with pytest.raises(BmcTimeout):  # first call also starts the worker pool: not timed
        d.get_power_state()
    t0 = time.monotonic()
    with pytest.raises(BmcTimeout):
        d.get_power_state()
    assert time.monotonic() - t0 < 0.8
    ipmi_mod.shutdown_pool()
