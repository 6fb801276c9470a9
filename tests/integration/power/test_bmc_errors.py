"""BMC errors say what really happened on the wire, against real peers (issue 19, item 1).

IPMI: a closed UDP port (ICMP port unreachable) is ``bmc_unreachable`` at once, a
socket that takes packets and never answers is ``bmc_timeout`` at the deadline,
ipmi_sim refusing the password is ``bmc_auth``. Redfish: the same three through a
closed TCP port, a listener that accepts and never answers, and sushy-tools'
emulator. Then the same through ``GET /api/v1/hosts/{h}/power`` on a live
controller (the body's ``error`` is the class, the message names the BMC, never
the password), and the CLI's spinner on a terminal (and nothing in a pipe).
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.conductor import power as power_mod
from provisioner.drivers.power.base import BmcSpec, PowerInterface
from provisioner.drivers.power.ipmi import IpmiPower
from provisioner.drivers.power.redfish import RedfishPower
from provisioner.errors import BmcAuthError, BmcTimeout, BmcUnreachable, DriverError
from tests.support.cli import prov_executable
from tests.support.controller import LiveController, live_controller
from tests.support.power import IpmiSim, SushyEmulator, add_host, free_tcp_port, free_udp_port

pytestmark = pytest.mark.integration

WRONG = "wrong-pw-9f3c2"  # a password that must never show in a message
SUITE3 = {"cipher_suite": 3}  # ipmi_sim has no cipher suite 17 (field notes)


@contextlib.contextmanager
def silent_udp() -> Iterator[int]:
    """A UDP port that receives every packet and never answers (a BMC that hung)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def silent_tcp() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def fails(driver: PowerInterface, cls: type[DriverError]) -> tuple[DriverError, float]:
    t0 = time.monotonic()
    with pytest.raises(cls) as err:
        driver.get_power_state()
    return err.value, time.monotonic() - t0


def ipmi(port: int, password: str = WRONG, timeout: float = 2.0) -> IpmiPower:
    return IpmiPower(BmcSpec("ipmi", "127.0.0.1", port, "admin", password, options=SUITE3, timeout=timeout))


def redfish(port: int, password: str = WRONG, timeout: float = 2.0) -> RedfishPower:
    return RedfishPower(BmcSpec("redfish", "127.0.0.1", port, "admin", password, options={"scheme": "http"},
                                timeout=timeout))


def clean(err: DriverError, port: int) -> None:
    """The message names the BMC, and neither it nor the error's details carry the password."""
    assert f"127.0.0.1:{port}" in err.message
    assert WRONG not in str(err.to_dict())


# --------------------------------------------------------------------------- IPMI
def test_ipmi_closed_port_is_unreachable_quickly() -> None:
    port = free_udp_port()
    err, seconds = fails(ipmi(port), BmcUnreachable)
    assert seconds < 2.0  # the ICMP error comes back in microseconds; pyghmi alone waits out its retries
    assert err.code == "bmc_unreachable" and err.message == f"BMC 127.0.0.1:{port}: port unreachable (ICMP)"
    clean(err, port)


def test_ipmi_silent_bmc_times_out_at_the_deadline() -> None:
    with silent_udp() as port:
        err, seconds = fails(ipmi(port, timeout=2.0), BmcTimeout)
    assert 1.9 < seconds < 2.6
    assert err.code == "bmc_timeout" and err.message == f"BMC 127.0.0.1:{port}: no answer within 2.0s"
    clean(err, port)


def test_ipmi_wrong_password_or_user_is_auth(ipmi_sim: Callable[..., IpmiSim]) -> None:
    sim = ipmi_sim()
    err, seconds = fails(ipmi(sim.port), BmcAuthError)
    assert seconds < 2.0 and err.code == "bmc_auth"
    assert err.message.startswith(f"BMC 127.0.0.1:{sim.port}: user or password refused")
    clean(err, sim.port)
    unknown = IpmiPower(BmcSpec("ipmi", "127.0.0.1", sim.port, "nobody", WRONG, options=SUITE3, timeout=2.0))
    err, _ = fails(unknown, BmcAuthError)
    assert "Unauthorized name" in err.message and "RMCP+ status 0x0d" in err.message
    assert ipmi(sim.port, password=sim.password).get_power_state().value == "off"  # the right one works


# --------------------------------------------------------------------------- Redfish
def test_redfish_closed_port_is_unreachable_quickly() -> None:
    port = free_tcp_port()
    err, seconds = fails(redfish(port), BmcUnreachable)
    assert seconds < 1.0
    assert err.message == f"BMC 127.0.0.1:{port}: connection refused (TCP)"
    clean(err, port)


def test_redfish_silent_listener_times_out_at_the_deadline() -> None:
    with silent_tcp() as port:
        err, seconds = fails(redfish(port, timeout=2.0), BmcTimeout)
    assert 1.9 < seconds < 2.6
    assert err.message == f"BMC 127.0.0.1:{port}: no answer within 2.0s"
    clean(err, port)


def test_redfish_wrong_password_is_auth(sushy: SushyEmulator) -> None:
    err, _ = fails(redfish(sushy.port), BmcAuthError)
    assert err.message == f"BMC 127.0.0.1:{sushy.port}: user or password refused (HTTP 401)"
    clean(err, sushy.port)
    assert redfish(sushy.port, password=sushy.password).get_power_state().value in ("on", "off")


# --------------------------------------------------------------------------- through the API and the CLI
@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(tmp_path / "api", power_call_timeout=2.0, power_retries=1, log_level="WARNING") as c:
        power_mod.get_service(c.settings).backoff_base = 0.05
        try:
            yield c
        finally:
            power_mod.reset_services()


def test_api_power_error_bodies_name_the_class_and_the_bmc(ctl: LiveController, ipmi_sim: Callable[..., IpmiSim],
                                                           sushy: SushyEmulator) -> None:
    sim = ipmi_sim()
    closed_udp, closed_tcp = free_udp_port(), free_tcp_port()
    with silent_udp() as quiet_udp, silent_tcp() as quiet_tcp:
        cases = {
            "ipmi-closed": ("ipmi", closed_udp, 502, "bmc_unreachable", "port unreachable (ICMP)"),
            "ipmi-silent": ("ipmi", quiet_udp, 504, "bmc_timeout", "no answer within 1.0s"),
            "ipmi-auth": ("ipmi", sim.port, 502, "bmc_auth", "user or password refused"),
            "rf-closed": ("redfish", closed_tcp, 502, "bmc_unreachable", "connection refused (TCP)"),
            "rf-silent": ("redfish", quiet_tcp, 504, "bmc_timeout", "no answer within 1.0s"),
            "rf-auth": ("redfish", sushy.port, 502, "bmc_auth", "user or password refused (HTTP 401)"),
        }
        for name, (kind, port, *_rest) in cases.items():
            options = {**SUITE3} if kind == "ipmi" else {"scheme": "http"}
            add_host(ctl.settings, name, kind=kind, port=port, password=WRONG, options={**options, "timeout": 1.0})
        with httpx.Client(base_url=ctl.url, headers={"Authorization": f"Bearer {ctl.token}"}, timeout=30) as h:
            for name, (_kind, port, status, code, words) in cases.items():
                t0 = time.monotonic()
                r = h.get(f"/api/v1/hosts/{name}/power")
                body = r.json()
                assert (r.status_code, body["error"]) == (status, code), (name, r.text)
                assert f"127.0.0.1:{port}" in body["message"] and words in body["message"], (name, body)
                assert WRONG not in r.text, name
                if code == "bmc_unreachable":  # retried once (retryable), each attempt fast
                    assert time.monotonic() - t0 < 2.0, name


def _prov(ctl: LiveController, tmp_path: Path, *args: str, tty: bool) -> tuple[int, str]:
    """Run the real ``prov`` with stderr on a pseudo-terminal (tty=True) or a pipe; return (rc, stderr)."""
    env = {**os.environ, **ctl.env(), "PROV_CLIENT_CONFIG": str(tmp_path / "client.yaml"), "COLUMNS": "200"}
    if not tty:
        done = subprocess.run([prov_executable(), *args], env=env, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([prov_executable(), *args], env=env, stdout=subprocess.DEVNULL, stderr=slave,
                                stdin=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(10), out.decode(errors="replace")
    finally:
        os.close(master)


def test_cli_shows_progress_on_a_terminal_only(ctl: LiveController, tmp_path: Path) -> None:
    with silent_udp() as port:
        add_host(ctl.settings, "slow", port=port, password=WRONG, options={**SUITE3, "timeout": 1.0})
        rc, err = _prov(ctl, tmp_path, "host", "power", "status", "slow", tty=True)
        assert rc == 6
        assert "power status slow: waiting for the BMC" in err and "\x1b[K" in err
        rc, err = _prov(ctl, tmp_path, "host", "power", "status", "slow", tty=False)
        assert rc == 6 and "waiting for the BMC" not in err and "\r" not in err
