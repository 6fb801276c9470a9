"""Dead and slow BMCs must not take the API down (issue 18, item 1).

A request that waits on a BMC used to keep its pooled database connection (and a
thread of the shared pool) for as long as the BMC took: some 15 concurrent power
queries against dead BMCs exhausted the pool and every other request waited, then
failed with 500. Here 20 hosts have BMCs that never answer (IPMI: a bound UDP port
that reads nothing; Redfish: a TCP port that accepts and never replies); while more
power queries than the API has threads wait on them, ``/healthz`` and the host list
must answer fast, and nothing may fail with a 5xx that is not a BMC error.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.controller import LiveController, live_controller

pytestmark = pytest.mark.integration

HOSTS = 20
# More than the API's shared thread pool (40): the BMC waits must not occupy it.
POWER_REQUESTS = 60
BMC_TIMEOUT = 4.0  # seconds the controller waits on one BMC call (no retries)
FAST = 1.0  # p99 bound for requests that touch no BMC


class Blackhole:
    """UDP sockets that read nothing and TCP listeners that accept and never answer."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()

    def udp(self) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        self.sockets.append(s)
        return int(s.getsockname()[1])

    def tcp(self) -> int:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        s.settimeout(0.2)
        self.sockets.append(s)
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return int(s.getsockname()[1])

    def _accept(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            self._held.append(conn)  # never read, never answered, kept open

    def close(self) -> None:
        self._stop.set()
        for s in self._held + self.sockets:
            s.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    bh = Blackhole()
    try:
        yield bh
    finally:
        bh.close()


@pytest.fixture
def ctl(tmp_path: Path, blackhole: Blackhole) -> Iterator[LiveController]:
    with live_controller(tmp_path / "data", power_call_timeout=BMC_TIMEOUT, power_retries=0,
                         log_level="WARNING") as c:
        with httpx.Client(base_url=c.url, headers=_headers(c), timeout=30) as api:
            for i in range(HOSTS):
                if i % 2 == 0:
                    bmc: dict[str, Any] = {"kind": "ipmi", "address": "127.0.0.1", "port": blackhole.udp()}
                else:
                    bmc = {"kind": "redfish", "address": "127.0.0.1", "port": blackhole.tcp(),
                           "options": {"scheme": "http"}}
                bmc |= {"username": "admin", "password": f"dead-bmc-pw-{i}"}
                body = {"name": f"dead{i:02d}", "nics": [{"mac": f"52:54:00:00:10:{i:02x}", "boot": True}],
                        "bmc": bmc}
                r = api.post("/api/v1/hosts", json=body)
                assert r.status_code == 201, r.text
        yield c


def _headers(c: LiveController) -> dict[str, str]:
    return {"Authorization": f"Bearer {c.token}"}


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _bmc_error(r: httpx.Response) -> bool:
    """The documented class for a BMC that does not answer: 502/504 with a ``bmc_*`` error code."""
    try:
        code = r.json().get("error", "")
    except ValueError:
        return False
    return r.status_code in (502, 504) and isinstance(code, str) and code.startswith("bmc_")


def test_dead_bmcs_do_not_starve_the_api(ctl: LiveController) -> None:
    headers = _headers(ctl)
    power: list[httpx.Response] = []
    stop = threading.Event()
    probes: dict[str, list[float]] = {"/healthz": [], "/api/v1/hosts": []}
    probe_errors: list[str] = []

    def ask_power(i: int) -> None:
        with httpx.Client(base_url=ctl.url, headers=headers, timeout=120) as h:
            power.append(h.get(f"/api/v1/hosts/dead{i % HOSTS:02d}/power"))

    def probe() -> None:
        with httpx.Client(base_url=ctl.url, headers=headers, timeout=60) as h:
            while not stop.is_set():
                for path, times in probes.items():
                    t0 = time.perf_counter()
                    r = h.get(path)
                    times.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        probe_errors.append(f"{path}: {r.status_code} {r.text[:200]}")
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    with ThreadPoolExecutor(max_workers=POWER_REQUESTS) as pool:
        futures = [pool.submit(ask_power, i) for i in range(POWER_REQUESTS)]
        time.sleep(0.5)  # let the power queries reach their BMCs first
        prober.start()
        for f in futures:
            f.result()
    stop.set()
    prober.join(timeout=60)

    assert not probe_errors, probe_errors[:5]
    for path, times in probes.items():
        assert len(times) >= 5, f"{path}: only {len(times)} answers while the BMCs were waited on"
        assert _p99(times) < FAST, f"{path}: p99 {_p99(times):.2f}s, max {max(times):.2f}s over {len(times)}"
    assert len(power) == POWER_REQUESTS
    unexpected = [f"{r.status_code} {r.text[:200]}" for r in power if r.status_code >= 500 and not _bmc_error(r)]
    assert not unexpected, unexpected[:5]
    assert all(r.status_code != 200 or r.json().get("ok") for r in power)


def test_concurrent_verify_of_one_host_one_wins_the_rest_409(ctl: LiveController) -> None:
    headers = _headers(ctl)
    n = 20
    barrier = threading.Barrier(n)
    results: list[httpx.Response] = []

    def verify() -> None:
        with httpx.Client(base_url=ctl.url, headers=headers, timeout=120) as h:
            barrier.wait()
            results.append(h.post("/api/v1/hosts/dead00/verify"))

    threads = [threading.Thread(target=verify) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    # the losers are told at once; only the winner waits on the (dead) BMC
    with httpx.Client(base_url=ctl.url, headers=headers, timeout=60) as h:
        time.sleep(0.5)
        t1 = time.perf_counter()
        assert h.get("/api/v1/hosts").status_code == 200
        assert time.perf_counter() - t1 < FAST
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert len(codes) == n
    assert codes.count(409) == n - 1, [f"{r.status_code} {r.text[:150]}" for r in results if r.status_code != 409]
    winner = next(r for r in results if r.status_code != 409)
    assert winner.status_code == 200, winner.text
    assert winner.json()["state"] == "verify-failed"
    assert time.perf_counter() - t0 < BMC_TIMEOUT * 4
    assert all(r.json()["error"] in ("invalid_transition", "conflict") for r in results if r.status_code == 409)
