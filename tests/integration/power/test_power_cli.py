"""``prov host power|bootdev|verify`` and ``prov rack power`` against the real API and ipmi_sim BMCs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import provisioner.cli.power  # noqa: F401  (registers the commands)
from provisioner.cli.groups import app
from provisioner.conductor import power as power_mod
from tests.support.cli import LiveServer, start_inprocess_server
from tests.support.power import IpmiSim, add_host, add_rack, free_udp_port

pytestmark = pytest.mark.integration


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with start_inprocess_server(tmp_path / "api") as server:
        svc = power_mod.get_service(server.settings)
        svc.confirm_interval = 0.1
        svc.backoff_base = 0.05  # the dead BMC's retries need not take seconds here
        try:
            yield server
        finally:
            power_mod.reset_services()


def run(live: LiveServer, tmp_path: Path, *args: str) -> Result:
    env = {**live.env, "PROV_CLIENT_CONFIG": str(tmp_path / "client.yaml"), "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_host_and_rack_power_commands(live: LiveServer, tmp_path: Path,
                                      ipmi_sim: Callable[..., IpmiSim]) -> None:
    s = live.settings
    sims = [ipmi_sim() for _ in range(3)]
    rack = add_rack(s, "r1")
    for i, sim in enumerate(sims):
        add_host(s, f"n{i}", port=sim.port, password=sim.password, options={"cipher_suite": 3}, rack_id=rack)

    r = run(live, tmp_path, "host", "power", "on", "n0", "n1")
    assert r.exit_code == 0, r.output
    assert "n0" in r.stdout and "yes" in r.stdout and "no " not in r.stdout
    assert sims[0].ipmitool_power() == "on" and sims[1].ipmitool_power() == "on"

    r = run(live, tmp_path, "host", "power", "status", "n0", "n2", "-o", "json")
    assert r.exit_code == 0 and '"power_state": "off"' in r.stdout and '"power_state": "on"' in r.stdout

    r = run(live, tmp_path, "host", "bootdev", "pxe", "n2", "--persistent", "--uefi")
    assert r.exit_code == 0, r.output
    assert sims[2].state("boot") == "pxe"

    r = run(live, tmp_path, "host", "verify", "n2")
    assert r.exit_code == 0 and "available" in r.stdout

    r = run(live, tmp_path, "rack", "power", "on", "r1")
    assert r.exit_code == 0, r.output
    assert all(sim.ipmitool_power() == "on" for sim in sims)
    assert "rack r1: power on" in r.stdout and "n2" in r.stdout

    r = run(live, tmp_path, "rack", "power", "status", "r1")
    assert r.exit_code == 0 and r.stdout.count("on") >= 3

    # one dead BMC (a closed port): the others still work, the table shows it, and the exit code says so
    add_host(s, "n9", port=free_udp_port(), password="pw-0123456789",
             options={"cipher_suite": 3, "timeout": 0.5}, rack_id=rack)
    r = run(live, tmp_path, "rack", "power", "off", "r1")
    assert r.exit_code != 0
    assert "bmc_unreachable" in r.stdout and "1 of 4 host(s) failed" in r.stderr
    assert all(sim.ipmitool_power() == "off" for sim in sims)

    r = run(live, tmp_path, "host", "power", "on", "n9", "nosuchhost")
    assert r.exit_code != 0 and "not_found" in r.stdout
