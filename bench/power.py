"""bench/power: power status of N ipmi_sim BMCs on loopback (each its own UDP port).

Measures, in the same run and against the same simulators:
  * prov, driver layer   - IpmiPower.get_power_state() for every BMC, fanned out
                           like the power service does (thread pool, pyghmi worker pool);
  * prov, power service  - rack_get_power(): the same plus per-host DB records and caps;
  * serial ipmitool loop - one `ipmitool -I lanplus -C 3 ... chassis power status` after
                           another (timed on a sample and extrapolated when N is large);
  * parallel ipmitool    - the same command as N processes, --ipmitool-parallel at a time.
Reports wall time, failures, ratios, and the simulators' memory (sum of RSS).

Usage: .venv/bin/python bench/power.py [--bmcs 100 1000] [--workers 32] [--serial-sample 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.conductor import power as power_service  # noqa: E402
from provisioner.drivers.power import ipmi, ipmi_pool  # noqa: E402
from provisioner.drivers.power.base import BmcSpec, PowerState  # noqa: E402
from tests.support.power import IpmiSim, add_host, add_rack, power_settings  # noqa: E402

PASSWORD = "bench-pw-0123"


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def listening_udp_ports() -> set[int]:
    ports = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        local = line.split()[1]
        ports.add(int(local.split(":")[1], 16))
    return ports


def start_sims(n: int, base: Path) -> list[IpmiSim]:
    sims = []
    for i in range(n):
        sims.append(IpmiSim(base / f"bmc{i:04d}", password=PASSWORD).start(wait=False))
    deadline = time.monotonic() + 60
    want = {s.port for s in sims}
    while time.monotonic() < deadline:
        missing = want - listening_udp_ports()
        if not missing:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"{len(missing)} ipmi_sim never listened")
    # One real answer from a sample (an .emu error leaves ipmi_sim listening but mute).
    sims[0].wait_ready()
    sims[-1].wait_ready()
    return sims


def ipmitool_status(sim: IpmiSim) -> bool:
    try:
        r = sim.ipmitool("chassis", "power", "status", check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and "Chassis Power is" in r.stdout


LATENCIES: dict[str, list[float]] = {}


def bench_driver(sims: list[IpmiSim], concurrency: int, label: str = "") -> tuple[float, int]:
    specs = [BmcSpec(kind="ipmi", address="127.0.0.1", port=s.port, username="admin", password=PASSWORD,
                     options={"cipher_suite": 3}, timeout=10) for s in sims]
    lat: list[float] = []

    def one(spec: BmcSpec) -> bool:
        t = time.monotonic()
        try:
            return ipmi.IpmiPower(spec).get_power_state() in (PowerState.ON, PowerState.OFF)
        except Exception as exc:
            print(f"  failure {spec.label}: {exc}", file=sys.stderr)
            return False
        finally:
            lat.append(time.monotonic() - t)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        ok = list(pool.map(one, specs))
    LATENCIES[label] = sorted(lat)
    return time.monotonic() - t0, ok.count(False)


def refused_login(spec: BmcSpec) -> None:
    with contextlib.suppress(Exception):
        ipmi.IpmiPower(spec).get_power_state()


def pct(label: str, q: float) -> float:
    lat = LATENCIES.get(label) or [0.0]
    return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)


def bench_service(sims: list[IpmiSim], tmp: Path, concurrency: int) -> tuple[float, int]:
    settings = power_settings(tmp / "db", power_concurrency=concurrency, power_call_timeout=10.0)
    rack = add_rack(settings, "bench")
    for i, s in enumerate(sims):
        add_host(settings, f"h{i:04d}", port=s.port, password=PASSWORD, options={"cipher_suite": 3}, rack_id=rack)
    t0 = time.monotonic()
    results = power_service.rack_get_power(rack, settings=settings)
    dt = time.monotonic() - t0
    return dt, sum(1 for r in results if not r.ok)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bmcs", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--workers", type=int, default=32, help="pyghmi worker processes")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight (power_concurrency)")
    ap.add_argument("--serial-sample", type=int, default=50)
    ap.add_argument("--ipmitool-parallel", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ["PROV_IPMI_WORKERS"] = str(args.workers)
    ipmi_pool.get_pool(args.workers)
    report = []
    for n in args.bmcs:
        with tempfile.TemporaryDirectory(prefix="prov-bench-power-") as d:
            tmp = Path(d)
            load0 = os.getloadavg()[0]  # the machine is shared: say how busy it was
            t0 = time.monotonic()
            sims = start_sims(n, tmp / "sims")
            start_s = time.monotonic() - t0
            mem = rss_kib([s.proc.pid for s in sims if s.proc])
            try:
                # Start the worker processes outside the timings (a controller keeps them):
                # one refused login per worker, so no BMC session is cached before "cold".
                warmup = [BmcSpec(kind="ipmi", address="127.0.0.1", port=s.port, username="nobody",
                                  password="x", options={"cipher_suite": 3}, timeout=10)
                          for s in sims[: args.workers]]
                with ThreadPoolExecutor(max_workers=args.workers) as pool:
                    list(pool.map(refused_login, warmup))
                cold, cold_fail = bench_driver(sims, args.concurrency, "cold")  # first contact: RMCP+ logins
                warm, warm_fail = bench_driver(sims, args.concurrency, "warm")  # sessions cached per worker
                svc, svc_fail = bench_service(sims, tmp, args.concurrency)
                sample = sims[: min(n, args.serial_sample)]
                t0 = time.monotonic()
                serial_ok = [ipmitool_status(s) for s in sample]
                serial_sample = time.monotonic() - t0
                serial = serial_sample * n / len(sample)
                t0 = time.monotonic()
                with ThreadPoolExecutor(max_workers=args.ipmitool_parallel) as pool:
                    par_ok = list(pool.map(ipmitool_status, sims))
                par = time.monotonic() - t0
            finally:
                for s in sims:
                    s.kill()
                ipmi_pool.shutdown_pool()
                ipmi_pool.get_pool(args.workers)
            row = {
                "bmcs": n,
                "loadavg_1m_before": round(load0, 1),
                "loadavg_1m_after": round(os.getloadavg()[0], 1),
                "sim_start_s": round(start_s, 2),
                "sim_rss_mib": round(mem / 1024, 1),
                "prov_cold_s": round(cold, 3), "prov_cold_failures": cold_fail,
                "prov_warm_s": round(warm, 3), "prov_warm_failures": warm_fail,
                "call_latency_cold_p50_p99_max": [pct("cold", 0.5), pct("cold", 0.99), pct("cold", 1.0)],
                "call_latency_warm_p50_p99_max": [pct("warm", 0.5), pct("warm", 0.99), pct("warm", 1.0)],
                "prov_service_s": round(svc, 3), "prov_service_failures": svc_fail,
                "serial_ipmitool_s": round(serial, 2),
                "serial_extrapolated_from": len(sample), "serial_failures_in_sample": serial_ok.count(False),
                "parallel_ipmitool_s": round(par, 3), "parallel_ipmitool_failures": par_ok.count(False),
                "ratio_serial_over_prov_cold": round(serial / cold, 1),
                "ratio_parallel_over_prov_cold": round(par / cold, 2),
                "ratio_serial_over_prov_service": round(serial / svc, 1),
            }
            report.append(row)
            if not args.json:
                print(f"{n} BMCs: ipmi_sim start {start_s:.1f}s, RSS {row['sim_rss_mib']} MiB, load average "
                      f"{row['loadavg_1m_before']} -> {row['loadavg_1m_after']} (2 cores)")
                print(f"  prov driver cold {cold:.2f}s ({cold_fail} failures), warm {warm:.2f}s ({warm_fail})")
                print(f"  per-call latency (queueing included) p50/p99/max: cold {row['call_latency_cold_p50_p99_max']}"
                      f" warm {row['call_latency_warm_p50_p99_max']}")
                print(f"  prov power service (with DB) {svc:.2f}s ({svc_fail} failures)")
                print(f"  serial ipmitool {serial:.1f}s (extrapolated from {len(sample)}: {serial_sample:.2f}s)")
                print(f"  parallel ipmitool x{args.ipmitool_parallel} {par:.2f}s ({par_ok.count(False)} failures)")
                print(f"  ratios: serial/prov-cold {row['ratio_serial_over_prov_cold']}x, "
                      f"parallel-ipmitool/prov-cold {row['ratio_parallel_over_prov_cold']}x, "
                      f"serial/prov-service {row['ratio_serial_over_prov_service']}x", flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    ipmi_pool.shutdown_pool()


if __name__ == "__main__":
    main()
