"""bench/scale part 2: one power-sync round over N hosts (10,000 by default), seen from the BMCs' side.

N fake BMCs (bench/scale/fakebmc.py: pyghmi's RMCP+ BMC server, ~960 sockets per
process because pyghmi's loop is select()-bound) on 127.0.0.1, N ipmi hosts
seeded straight into PostgreSQL (the password encrypted once with the
controller's key), then one ``prov serve`` (every role: the power sync runs
wherever the conductor role runs, today's thread or a workflow later) with
``power_sync_enabled``, ``power_sync_interval`` and ``power_concurrency`` set:
the bench only uses the public settings. It waits until every host's
power_state was recorded (or 1.5 intervals + 30 s), then reads what each BMC saw.

Reported: calls answered, the round's span against the interval, calls started per
tenth of the interval (from the first call), the peak of calls in flight (first
packet to chassis-status answer, at the BMCs) against power_concurrency, call
latency, and the CPU of the controller, PostgreSQL and the responders.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import Session

from bench.scale import stats
from bench.scale.procs import ROOT, Meter, RoleServer, stop_all
from provisioner import migrate, secret_store
from provisioner.db import get_engine
from provisioner.settings import Settings

PER_PROCESS = 960  # pyghmi's loop is select(): file descriptors above 1023 are refused
PASSWORD = "bench-pw-0123"


def start_bmcs(work: Path, n: int) -> tuple[list[subprocess.Popen[bytes]], list[int], list[Path]]:
    pw = work / "bmc.pw"
    pw.touch(mode=0o600)
    pw.write_text(PASSWORD)
    procs, outs, logs = [], [], []
    for k in range(math.ceil(n / PER_PROCESS)):
        count = min(PER_PROCESS, n - k * PER_PROCESS)
        ports, log = work / f"bmc{k}.ports", work / f"bmc{k}.json"
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.scale.fakebmc", str(count), str(pw), str(ports),
                                       str(log)], cwd=ROOT, start_new_session=True))
        outs.append(ports)
        logs.append(log)
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in outs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("fake BMC responders did not start")
        time.sleep(0.2)
    ports = [int(x) for p in outs for x in p.read_text().split()]
    return procs, ports, logs


Seen = dict[int, list[float]]  # port -> times


def stop_bmcs(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> tuple[Seen, Seen, int, int]:
    """SIGTERM every responder; what they saw, the packets they could not handle, how many died early."""
    died = sum(1 for p in procs if p.poll() is not None)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    first: Seen = {}
    status: Seen = {}
    errors = 0
    for p, log in zip(procs, logs, strict=True):
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        if log.exists():
            d = json.loads(log.read_text())
            first.update({int(k): v for k, v in d["first"].items()})
            status.update({int(k): v for k, v in d["status"].items()})
            errors += int(d.get("errors", 0))
    return first, status, errors, died


def seed(settings: Settings, ports: list[int]) -> None:
    from provisioner.models import Host

    migrate.upgrade(settings)
    enc = secret_store.encrypt(PASSWORD, settings)
    engine = get_engine(settings)
    with Session(engine) as s:
        # Seeding writes states directly (bulk fixture data), not through lifecycle.advance.
        s.add_all([Host(name=f"p{i:05d}", bmc_kind="ipmi", bmc_address="127.0.0.1", bmc_port=port,
                        bmc_username="admin", bmc_password_enc=enc, bmc_options={"cipher_suite": 3},
                        state="available") for i, port in enumerate(ports)])
        s.commit()
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def _answered(settings: Settings) -> int:
    with get_engine(settings).connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM host WHERE power_state = 'on'")).scalar() or 0)


def run(work: Path, pg: Any, pg_pid: int, *, hosts: int, interval: float, concurrency: int) -> dict[str, Any]:
    db = pg.create_database()
    key = Fernet.generate_key().decode()
    data = work / "ctl"
    settings = Settings(data_dir=work / "seed", database_url=pg.url(db), secret_key=key)
    t0 = time.monotonic()
    procs, ports, logs = start_bmcs(work, hosts)
    bmc_start_s = time.monotonic() - t0
    ctl: RoleServer | None = None
    res: dict[str, Any] = {"hosts": hosts, "interval": interval, "concurrency": concurrency,
                           "bmc_processes": len(procs), "bmc_start_s": bmc_start_s}
    try:
        seed(settings, ports)
        res["seed_s"] = time.monotonic() - t0 - bmc_start_s
        ctl = RoleServer(data, settings={
            "database_url": pg.url(db), "secret_key": key, "power_sync_enabled": True,
            "power_sync_interval": interval, "power_concurrency": concurrency, "power_call_timeout": 10.0,
            "power_retries": 1, "log_level": "WARNING"})
        meter = Meter({"postgres": pg_pid, **{f"bmc{k}": p.pid for k, p in enumerate(procs)}})
        before = meter.read()
        t_start = time.time()
        ctl.start(timeout=120)
        assert ctl.proc is not None
        meter.pids["controller"] = ctl.proc.pid
        before["controller"] = 0.0  # its whole life: start-up included (reported separately below)
        deadline = time.monotonic() + interval * 1.5 + 30
        done = 0
        while time.monotonic() < deadline:
            done = _answered(settings)
            if done >= hosts:
                break
            time.sleep(2)
        res["wall_s"] = time.time() - t_start
        cpu = Meter.delta(before, meter.read())
        res["cpu"] = {"controller": cpu["controller"], "postgres": cpu["postgres"], "machine": cpu["machine"],
                      "responders": sum(v for k, v in cpu.items() if k.startswith("bmc"))}
        res["recorded"] = done
    finally:
        if ctl is not None:
            stop_all([ctl])
        first, status, res["bmc_errors"], res["bmc_died"] = stop_bmcs(procs, logs)
        get_engine(settings).dispose()
    calls = [c for port in status for c in stats.pair_calls(first.get(port, []), status[port])]
    res["calls"] = len(calls)
    res["bmcs_answered"] = len(status)
    if calls:
        t_first = min(s for s, _ in calls)
        res["span_s"] = max(s for s, _ in calls) - t_first
        res["spread"] = stats.spread([s for s, _ in calls], t_first, interval)
        res["peak"] = stats.peak_in_flight(calls)
        lat = [(e - s) * 1000 for s, e in calls]
        res["latency_ms"] = (stats.percentile(lat, 50), stats.percentile(lat, 99), max(lat))
        res["startup_to_first_s"] = t_first - t_start
    return res


def report(res: dict[str, Any]) -> list[str]:
    out = [f"Power sync (part 2): {res['hosts']} ipmi hosts, power_sync_interval {res['interval']:g} s, "
           f"power_concurrency {res['concurrency']}; BMCs: {res['bmc_processes']} fake-BMC processes "
           f"(pyghmi RMCP+ server, bench/scale/fakebmc.py), up in {res['bmc_start_s']:.1f} s"]
    if not res.get("calls"):
        out.append("  no BMC call was answered")
        return out
    lat = res["latency_ms"]
    out += [f"  calls answered {res['calls']} by {res['bmcs_answered']} BMCs; power_state recorded for "
            f"{res['recorded']}/{res['hosts']} hosts; responder packets dropped {res['bmc_errors']}, "
            f"responders died {res['bmc_died']}",
            f"  round span (first to last call started) {res['span_s']:.1f} s of the {res['interval']:g} s interval "
            f"({res['span_s'] / res['interval']:.2f}); first call {res['startup_to_first_s']:.1f} s after start",
            f"  peak in flight (at the BMCs: first packet to chassis-status answer): {res['peak']} "
            f"(power_concurrency {res['concurrency']}; IPMI calls run in PROV_IPMI_WORKERS pyghmi worker processes, "
            "default 32)",
            f"  call latency p50 / p99 / max: {lat[0]:.0f} / {lat[1]:.0f} / {lat[2]:.0f} ms",
            f"  calls started per tenth of the interval from the first call, then after it (max/mean "
            f"{stats.evenness(res['spread']):.2f}; 1.00 = even):"]
    out += ["    " + line for line in stats.histogram_line(res["spread"])]
    cpu = res["cpu"]
    out.append(f"  CPU s over {res['wall_s']:.0f} s (controller start-up included): controller {cpu['controller']:.1f}"
               f" ({cpu['controller'] * 1000 / max(res['calls'], 1):.1f} ms/call), postgres {cpu['postgres']:.1f}, "
               f"fake BMCs {cpu['responders']:.1f}; the machine {cpu['machine']:.1f} "
               f"({cpu['machine'] / res['wall_s']:.2f} of {os.cpu_count()} cores busy)")
    return out
