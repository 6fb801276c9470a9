"""Fixtures for the power integration tests: real ipmi_sim, sushy-emulator and virtualbmc peers.

Every peer is started by the test that needs it and stopped afterwards; ports
are picked free; state lives in tmp_path. Helpers live in tests/support/power.py.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.conductor import power as power_mod
from provisioner.conductor.power import PowerService
from provisioner.drivers.power import ipmi_pool
from provisioner.settings import Settings
from tests.support.helpers import require_binary
from tests.support.power import IpmiSim, SushyEmulator, VirtualBmc, power_settings


def require_module(*names: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        msg = f"required peer package(s) not installed: {', '.join(missing)}"
        if os.environ.get("PROV_REQUIRE_PEERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return power_settings(tmp_path / "data", power_call_timeout=3.0, power_retries=1)


@pytest.fixture
def service(settings: Settings) -> Iterator[PowerService]:
    """The power service for ``settings``, registered so the module functions use it too."""
    svc = PowerService(settings)
    svc.confirm_interval = 0.1
    svc.confirm_timeout = 5.0
    svc.soft_off_timeout = 1.0
    power_mod._services[id(settings)] = svc
    try:
        yield svc
    finally:
        power_mod._services.pop(id(settings), None)


@pytest.fixture(scope="session", autouse=True)
def _ipmi_pool() -> Iterator[None]:
    yield
    ipmi_pool.shutdown_pool()


@pytest.fixture
def ipmi_sim(tmp_path: Path) -> Iterator[Callable[..., IpmiSim]]:
    require_binary("ipmi_sim", "ipmitool")
    started: list[IpmiSim] = []

    def make(name: str = "bmc", **kw: Any) -> IpmiSim:
        sim = IpmiSim(tmp_path / "sims" / f"{name}{len(started)}", **kw)
        started.append(sim)
        return sim.start()

    try:
        yield make
    finally:
        for sim in started:
            sim.kill()


@pytest.fixture
def sushy(tmp_path: Path) -> Iterator[SushyEmulator]:
    require_module("sushy_tools", "libvirt", "bcrypt")
    peer = SushyEmulator(tmp_path / "sushy")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def vbmc(tmp_path: Path) -> Iterator[VirtualBmc]:
    require_module("virtualbmc", "libvirt")
    peer = VirtualBmc(tmp_path / "vbmc")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
