"""Driver registry, validation, manual driver, error classification, and IPMI against pyghmi's Bmc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.drivers.power import available_kinds, get_driver, ipmi_pool, ipmi_worker
from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerState
from provisioner.drivers.power.ipmi import IpmiPower
from provisioner.drivers.power.manual import ManualPower, OperatorActionRequired
from provisioner.drivers.power.redfish import RedfishPower
from provisioner.errors import BmcAuthError, BmcTimeout, BmcUnreachable, InvalidInput
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
    ("text", "code", "kind", "reason"),
    [
        ("Incorrect password provided", 0, "auth", "Incorrect password"),
        ("Unauthorized name in RAKP2", 0, "auth", "RMCP+ status 0x0d"),
        ("Invalid integrity check value reported in RAKP4", 0, "auth", "RMCP+ status 0x0f"),
        ("Invalid RAKP4 integrity code (wrong Kg?)", 0, "auth", "wrong Kg"),
        ("Insufficient privilege level or firmware firewall while requesting privelege level 4 for admin", 0,
         "auth", "requesting"),
        ("Insufficient resources to create new session (wait for existing sessions to timeout)", 0, "busy",
         "0x01"),
        ("No Cipher suite match with proposed security algorithms", 0, "error", "0x11"),
        # pyghmi's "no answer": a broken session with no message, its own timeout, a dead session
        ("None", 0, "timeout", "no answer"),
        ("", 0, "timeout", "no answer"),
        ("timeout", 0xFFFF, "timeout", "no answer"),
        ("Session no longer connected", 0, "timeout", "no answer"),
        # completion codes (IPMI 2.0 table 5-2), with or without the number pyghmi kept
        ("Node Busy", 0xC0, "busy", "completion code 0xc0 (node busy)"),
        ("Node Busy", 0, "busy", "completion code 0xc0 (node busy)"),
        ("Invalid command", 0xC1, "unsupported", "completion code 0xc1 (invalid command)"),
        ("Invalid command for given LUN", 0, "error", "0xc2 (invalid command for the given LUN)"),
        ("Timeout while processing command", 0, "busy", "0xc3"),
        ("Insufficient privilege level or firmware firewall", 0, "error",
         "completion code 0xd4 (insufficient privilege level)"),
        ("Unspecified error", 0xFF, "busy", "0xff (unspecified error)"),
        ("Unknown code 0xd7 encountered", 0, "error", "0xd7 (unknown code)"),
        ("weird", 0x80, "error", "0x80 (command-specific code)"),
        ("Unable to transmit to specified address", 0, "unreachable", "cannot send"),
    ],
)
def test_ipmi_error_classification(text: str, code: int, kind: str, reason: str) -> None:
    class Fake(Exception):
        def __init__(self) -> None:
            super().__init__(None if text == "None" else text)
            self.ipmicode = code

    got_kind, got_reason = ipmi_worker._classify(Fake())
    assert got_kind == kind and reason in got_reason


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
        ipmi_pool.shutdown_pool()


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


def test_ipmi_closed_port_is_unreachable_at_once() -> None:
    d = IpmiPower(spec(port=free_udp_port(), timeout=3.0))
    t0 = time.monotonic()
    with pytest.raises(BmcUnreachable) as err:
        d.get_power_state()
    assert time.monotonic() - t0 < 1.5  # includes starting the worker pool
    assert err.value.message.endswith("port unreachable (ICMP)") and "pw-secret-1" not in err.value.message
    t0 = time.monotonic()
    with pytest.raises(BmcUnreachable):
        d.get_power_state()
    assert time.monotonic() - t0 < 0.5


def test_ipmi_silent_bmc_times_out_within_bound() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        d = IpmiPower(spec(port=silent.getsockname()[1], timeout=0.6))
        with pytest.raises(BmcTimeout):  # first call may also start the worker pool: not timed
            d.get_power_state()
        t0 = time.monotonic()
        with pytest.raises(BmcTimeout) as err:
            d.get_power_state()
        assert time.monotonic() - t0 < 1.0
        assert err.value.message == f"BMC 127.0.0.1:{silent.getsockname()[1]}: no answer within 0.6s"
    ipmi_pool.shutdown_pool()
