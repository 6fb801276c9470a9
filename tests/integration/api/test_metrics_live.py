"""/metrics of a real ``prov serve``: real BMC calls (ipmi_sim), real TFTP and HTTP boot fetches (curl),
a scrape-only token made with ``prov token create --scope metrics``, and promtool's lint of the exposition.

The BMC series must move with their class: an answered power query (ok), a
refused password (bmc_auth), a BMC that never answers (bmc_timeout). The TFTP
series move with a file sent in full and a refused request; HTTP boot bytes with
a kernel fetched over HTTP; the DHCP gauge follows dnsmasq's lease file. The
metrics token scrapes and reads nothing else (403 on /api/v1/hosts).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import prov_executable
from tests.support.helpers import require_binary
from tests.support.power import IpmiSim, free_udp_port
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PAYLOAD = 70_000  # > 65,535 / 512 blocks would roll over; this is 137 blocks of 512


def _parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _v(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[IpmiSim]]:
    """Two BMCs (prov refuses two hosts on one BMC): one gets the right password, one a wrong one."""
    require_binary("ipmi_sim", "ipmitool", "curl")
    peers: list[IpmiSim] = []
    try:
        for n in range(2):
            peers.append(IpmiSim(tmp_path / f"sim{n}").start())
        yield peers
    finally:
        for peer in peers:
            peer.kill()


@pytest.fixture
def silent_bmc() -> Iterator[int]:
    """A UDP port that reads nothing: a BMC that never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[ServeProcess]:
    data = tmp_path / "data"
    (data / "boot").mkdir(parents=True)
    (data / "boot" / "vmlinuz-test").write_bytes(os.urandom(PAYLOAD))
    proc = ServeProcess(data, settings={"tftp_enabled": True, "tftp_host": "127.0.0.1", "tftp_port": free_udp_port(),
                                        "power_call_timeout": 1.5, "power_retries": 0})
    with proc:
        yield proc


def _host(http: httpx.Client, name: str, mac: str, port: int, password: str) -> None:
    r = http.post("/api/v1/hosts", json={"name": name, "nics": [{"mac": mac, "boot": True}],
                                         "bmc": {"kind": "ipmi", "address": "127.0.0.1", "port": port,
                                                 "username": "admin", "password": password}})
    assert r.status_code == 201, r.text


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "20", *args], capture_output=True,
                          timeout=30)


def test_bmc_tftp_and_http_boot_counters_move_and_a_metrics_token_only_scrapes(
        ctl: ServeProcess, sims: list[IpmiSim], silent_bmc: int, tmp_path: Path) -> None:
    tftp_port = int(ctl.env["PROV_TFTP_PORT"])
    made = subprocess.run([prov_executable(), "token", "create", "--name", "prometheus", "--scope", "metrics"],
                          env={**ctl.env, "PROV_URL": ctl.url, "PROV_TOKEN": ctl.token,
                               "PROV_CLIENT_CONFIG": str(tmp_path / "client.yaml")},
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    scraper = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with httpx.Client(base_url=ctl.url, headers={"Authorization": f"Bearer {ctl.token}"}, timeout=30) as http:

        def scrape() -> Samples:
            r = httpx.get(f"{ctl.url}/metrics", headers=scraper, timeout=10)
            assert r.status_code == 200, r.text
            return _parse(r.text)

        before = scrape()
        _host(http, "good", "52:54:00:19:09:01", sims[0].port, sims[0].password)
        _host(http, "badpw", "52:54:00:19:09:02", sims[1].port, "not-the-password")
        _host(http, "dead", "52:54:00:19:09:03", silent_bmc, "whatever-pw")
        r = http.get("/api/v1/hosts/good/power")
        assert r.status_code == 200 and r.json()["power_state"] in ("on", "off"), r.text
        assert http.get("/api/v1/hosts/badpw/power").json()["error"] == "bmc_auth"
        assert http.get("/api/v1/hosts/dead/power").json()["error"] == "bmc_timeout"

        out = tmp_path / "got"
        r1 = _curl(f"tftp://127.0.0.1:{tftp_port}/vmlinuz-test", "-o", str(out))
        assert r1.returncode == 0, r1.stderr
        assert out.read_bytes() == (ctl.data_dir / "boot" / "vmlinuz-test").read_bytes()
        assert _curl(f"tftp://127.0.0.1:{tftp_port}/no-such-file", "-o", str(tmp_path / "x")).returncode != 0
        r2 = _curl("--fail", f"{ctl.url}/boot/files/vmlinuz-test", "-o", str(tmp_path / "http"))
        assert r2.returncode == 0 and (tmp_path / "http").stat().st_size == PAYLOAD, r2.stderr

        leases = ctl.data_dir / "dnsmasq" / "leases"
        leases.parent.mkdir(parents=True, exist_ok=True)
        leases.write_text(f"{int(time.time()) + 600} 52:54:00:19:09:01 10.9.0.10 good *\n")

        # the server counts a TFTP transfer once it has the last ACK, a moment after curl is done
        deadline = time.monotonic() + 10
        after = scrape()
        while _v(after, "prov_tftp_transfers_total", outcome="ok") == _v(before, "prov_tftp_transfers_total",
                                                                          outcome="ok"):
            assert time.monotonic() < deadline, "the TFTP transfer was never counted"
            time.sleep(0.1)
            after = scrape()

        def moved(name: str, **labels: str) -> float:
            return _v(after, name, **labels) - _v(before, name, **labels)

        assert moved("prov_bmc_calls_total", driver="ipmi", op="get_power_state", outcome="ok") == 1
        assert moved("prov_bmc_calls_total", driver="ipmi", op="get_power_state", outcome="error") == 2
        assert moved("prov_bmc_call_errors_total", driver="ipmi", **{"class": "bmc_auth"}) == 1
        assert moved("prov_bmc_call_errors_total", driver="ipmi", **{"class": "bmc_timeout"}) == 1
        assert moved("prov_bmc_call_duration_seconds_count", driver="ipmi", op="get_power_state") == 3
        # the silent BMC took the whole call bound
        assert moved("prov_bmc_call_duration_seconds_sum", driver="ipmi", op="get_power_state") >= 1.5
        assert moved("prov_tftp_transfers_total", outcome="ok") == 1
        assert moved("prov_tftp_transfers_total", outcome="refused") == 1
        assert moved("prov_tftp_bytes_sent_total") == PAYLOAD
        assert moved("prov_http_boot_bytes_total", kind="file") == PAYLOAD
        assert _v(after, "prov_dhcp_leases") == 1
        assert not [name for name, _labels in after if name.endswith("_created")]
        assert any(name == "prov_build_info" for name, _labels in after)
        assert _v(after, "process_resident_memory_bytes") > 0

        # the scrape-only token reads nothing else; the operator's token still scrapes
        r = httpx.get(f"{ctl.url}/api/v1/hosts", headers=scraper)
        assert r.status_code == 403 and r.json()["token_scopes"] == ["metrics"], r.text
        assert httpx.post(f"{ctl.url}/api/v1/hosts/good/power", headers=scraper,
                          json={"action": "off"}).status_code == 403
        text = http.get("/metrics").text
        assert http.get("/metrics").status_code == 200

    _promtool_check(text)


def _promtool_check(text: str) -> None:
    """promtool's lint of the exposition (Debian's prometheus package), when it is installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("PROV_REQUIRE_PEERS") == "1":
            pytest.fail("promtool not installed (apt-get install prometheus)")
        return  # the counters above were checked; only the lint is left out
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
