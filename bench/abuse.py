"""bench/abuse: the controller on a bad day (issue 18), against itself on a quiet one.

    .venv/bin/python bench/abuse.py [--seconds 30] [--idle 12] [--clients 200] [--flood 1000]

One ``prov serve`` (tests.support.serve: temp data dir, SQLite, TFTP on a free
high port) with 100 hosts whose BMCs are dead (half a closed UDP port: ICMP
unreachable at once; half a UDP socket that reads nothing: every call runs into
its timeout) and 50 hosts on the ``manual`` power driver, 5 of which get
installed. Three phases, the quiet ones on both sides of the loud one:

  idle   /healthz polled every 50 ms, a real TFTP client (curl) fetching undionly.kpxe every
         2 s, and 5 installs played over HTTP as iPXE + the installer would (boot script,
         token, preseed, start/progress/done reports; a real sshd answers for the installed OS)
  abuse  the same (the 5 reinstalls requested just before, their installers playing under
         the load), plus at once: 200 API clients (40 asking the
         dead/slow BMCs for power status, 160 mixing 80 % reads with 20 % writes), 20
         anonymous clients hammering boot scripts and install routes from 127.0.0.2-21,
         and a TFTP flood of 1,000 silent UDP sockets (127.0.0.2-250, 200 of them from
         127.0.0.251) each sending an RRQ every 5 s and acknowledging nothing
  idle   again, to see the controller recover

Prints /healthz min/p50/p99/max per phase and the abuse/idle ratio, every API
response by route and status (429 and BMC verdicts, i.e. a 502/504 whose error
is bmc_*, apart from other 5xx), the real TFTP client's successes, the
installs' progress and durations, and PASS/FAIL against issue 18's targets:
/healthz p99 < 100 ms under abuse, 0 x 5xx, every real TFTP fetch succeeds,
every install reaches active. Loopback only; the 2-core machine this runs on
also runs the load, so wall-clock figures include that: the report ends with the
CPU each side used in the abuse phase. The generators are cheap by design (the
API clients are one asyncio process on raw keep-alive connections,
bench/abuse_http.py; the poller its own process at nice -5; the flood one
thread of non-blocking sockets): together about 0.15 of a core, against the
controller's one core of GIL-bound Python, so the figures are the controller's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.abuse_load import FLOOD_SINGLE, TftpFlood, sha256, tftp_client_loop  # noqa: E402
from tests.support.helpers import free_port  # noqa: E402
from tests.support.install_faults import Installer, Sshd  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghij bench@prov"


# --------------------------------------------------------------------------- setup
class DeadBmcs:
    """Closed UDP ports (nothing bound: the kernel answers port unreachable) and silent UDP sockets."""

    def __init__(self, closed: int, silent: int) -> None:
        self.silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(silent)]
        for s in self.silent:
            s.bind(("127.0.0.1", 0))
        self.closed_ports = []
        for _ in range(closed):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                self.closed_ports.append(int(s.getsockname()[1]))

    def hosts(self) -> list[tuple[str, str, int]]:
        """(kind, name, port) for every dead BMC."""
        return ([("closed", f"dead{i:03d}", p) for i, p in enumerate(self.closed_ports)]
                + [("silent", f"slow{i:03d}", int(s.getsockname()[1])) for i, s in enumerate(self.silent)])

    def close(self) -> None:
        for s in self.silent:
            s.close()


def enrol(api: httpx.Client, bmcs: DeadBmcs, manual: int, installs: int, ssh_port: int) -> dict[str, Any]:
    def ok(resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:300]}")
        return resp

    ok(api.post("/api/v1/profiles", json={
        "name": "bench-deb", "os_family": "debian", "install_method": "preseed",
        "kernel_url": "images/debian/linux", "initrd_url": "images/debian/initrd.gz", "kernel_args": "console=ttyS0",
        "params": {"ssh_authorized_keys": [SSH_KEY], "ssh_port": ssh_port}}))
    for _kind, name, port in bmcs.hosts():
        ok(api.post("/api/v1/hosts", json={"name": name, "bmc": {
            "kind": "ipmi", "address": "127.0.0.1", "port": port, "username": "admin", "password": "bench-pw-0123"}}))
    names, macs = [], {}
    for i in range(manual):
        name = f"inst{i:02d}" if i < installs else f"man{i:03d}"
        mac = f"52:54:00:ab:{i // 256:02x}:{i % 256:02x}"
        body: dict[str, Any] = {"name": name, "bmc": {"kind": "manual"},
                                "nics": [{"mac": mac, "name": "eth0", "boot": True, "ip": "127.0.0.1"}]}
        if i < installs:
            body.update(profile="bench-deb", ip_address="127.0.0.1")
            macs[name] = mac
        ok(api.post("/api/v1/hosts", json=body))
        names.append(name)

    def verify(name: str) -> None:
        ok(api.post(f"/api/v1/hosts/{name}/verify"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(verify, names))
    return {"spare": [n for n in names if n not in macs], "installs": macs,
            "dead": [(kind, name) for kind, name, _ in bmcs.hosts()]}


# --------------------------------------------------------------------------- installs
@dataclass
class InstallRun:
    host: str
    phase: str
    # install-wait: seconds after the install request; booting, active: after the installer's first request
    marks: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and "active" in self.marks


def _wait_state(api: httpx.Client, name: str, want: str, deadline: float) -> None:
    while True:
        # the operator's view: a 503 or a slow answer here is the load's doing, asked again (and counted
        # by the API clients); the installer's own requests (Installer) are not retried
        try:
            r = api.get(f"/api/v1/hosts/{name}")
            state = r.json().get("state") if r.status_code == 200 else None
        except httpx.HTTPError:
            state = None
        if state == want:
            return
        if state in ("install-failed", "configure-failed") or time.monotonic() > deadline:
            raise AssertionError(f"{name} is {state}, waited for {want}")
        time.sleep(0.2)


def install_one(api: httpx.Client, url: str, run: InstallRun, mac: str, timeout: float,
                gate: threading.Event | None) -> None:
    """POST install -> install-wait -> [gate] -> the installer (boot script, preseed, start, done) -> booting -> active.

    ``gate``: the installer's part waits for it, so an install is already in progress when the load starts.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        r = api.post(f"/api/v1/hosts/{run.host}/install", json={})
        if r.status_code != 202:
            raise AssertionError(f"install: {r.status_code} {r.text[:200]}")
        _wait_state(api, run.host, "install-wait", deadline)
        run.marks["install-wait"] = time.monotonic() - t0
        if gate is not None:
            gate.wait(timeout)
        t1 = time.monotonic()  # the installer's part is timed from its first request
        Installer(url, mac).netboot().install()  # asserts done -> booting
        run.marks["booting"] = time.monotonic() - t1
        _wait_state(api, run.host, "active", time.monotonic() + timeout)
        run.marks["active"] = time.monotonic() - t1
    except (AssertionError, httpx.HTTPError) as exc:
        run.error = f"{type(exc).__name__}: {str(exc)[:200]}"


def install_all(api: httpx.Client, url: str, hosts: dict[str, str], phase: str, timeout: float,
                out: list[InstallRun], gate: threading.Event | None = None) -> threading.Thread:
    runs = [InstallRun(name, phase) for name in hosts]
    out.extend(runs)

    def go() -> None:
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(lambda r: install_one(api, url, r, hosts[r.host], timeout, gate), runs))

    th = threading.Thread(target=go, name=f"installs-{phase}", daemon=True)
    th.start()
    return th


def wait_in_progress(out: list[InstallRun], phase: str, timeout: float) -> None:
    """Until every install of ``phase`` waits for its installer (or failed getting there)."""
    deadline = time.monotonic() + timeout
    runs = [r for r in out if r.phase == phase]
    while time.monotonic() < deadline and not all("install-wait" in r.marks or r.error for r in runs):
        time.sleep(0.1)


# --------------------------------------------------------------------------- child processes
@contextlib.contextmanager
def child(work: Path, role: str, cfg: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    conf, out = work / f"{role}.json", work / f"{role}.out.json"
    conf.touch(mode=0o600)
    conf.write_text(json.dumps(cfg))  # the token travels in this file, never on a command line
    proc = subprocess.Popen([sys.executable, "-m", "bench.abuse_load", role, str(conf), str(out)], cwd=ROOT)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def read_out(proc: subprocess.Popen[bytes], out: Path, timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return {}
    return json.loads(out.read_text()) if out.exists() else {}


# --------------------------------------------------------------------------- the run
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (nan once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of proc(5))


def own_cpu_seconds() -> float:
    """This process (the flood, the installers, the real TFTP client's loop) and its reaped children (curl)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Phases:
    marks: list[tuple[str, float, float]] = field(default_factory=list)  # name, start, end (monotonic)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        print(f"# {name} ...", flush=True)
        try:
            yield
        finally:
            self.marks.append((name, t0, time.monotonic()))

    def of(self, t: float) -> str | None:
        return next((name for name, a, b in self.marks if a <= t < b), None)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bmcs = DeadBmcs(args.dead // 2, args.dead - args.dead // 2)
    sshd = Sshd(work / "sshd", free_port())
    tftp_port = free_port(socket.SOCK_DGRAM)
    ctl = ServeProcess(work / "data", settings={
        "tftp_enabled": True, "tftp_host": "127.0.0.1", "tftp_port": tftp_port,
        "power_call_timeout": args.bmc_timeout, "power_retries": 1, "log_level": "INFO"})
    flood = TftpFlood(tftp_port, args.flood, args.flood_single, args.seed)
    stop_all = threading.Event()
    phases = Phases()
    res: dict[str, Any] = {"installs": [], "tftp": [], "flood": flood, "phases": phases, "api": {}, "healthz": []}
    try:
        sshd.start()
        t_setup = time.monotonic()
        ctl.start(timeout=60)
        api = httpx.Client(base_url=ctl.url, headers={"Authorization": f"Bearer {ctl.token}"}, timeout=60)
        hosts = enrol(api, bmcs, args.manual, args.installs, sshd.port)
        served = ctl.data_dir / "boot" / "undionly.kpxe"
        if not served.is_file():
            raise RuntimeError(f"no {served}: is the ipxe package installed? {ctl.log_tail(800)}")
        want_sha = sha256(served)
        res["setup_s"] = time.monotonic() - t_setup
        poll_cfg = {"url": ctl.url, "interval": args.healthz_every, "timeout": 5.0,
                    "stop_file": str(work / "healthz.stop"), "max_seconds": 2 * args.idle + args.seconds + 240}
        with child(work, "healthz", poll_cfg) as (poller, poll_out):
            tftp_th = threading.Thread(target=tftp_client_loop, daemon=True, args=(
                tftp_port, want_sha, work / "fetched.kpxe", stop_all, args.tftp_every, res["tftp"]))
            tftp_th.start()
            with phases.phase("idle (before)"):
                th = install_all(api, ctl.url, hosts["installs"], "idle", args.install_timeout, res["installs"])
                time.sleep(args.idle)
                th.join(args.install_timeout)
            load_cfg = {"url": ctl.url, "token": ctl.token, "seconds": args.seconds, "grace": 2.0,
                        "timeout": 30.0, "seed": args.seed, "clients": args.clients,
                        "power_clients": args.power_clients, "anon_clients": args.anon,
                        "dead_hosts": hosts["dead"], "spare_hosts": hosts["spare"],
                        "read_hosts": hosts["spare"] + [n for _, n in hosts["dead"]]}
            # installs in progress: requested now, their installers play once the load is on
            gate = threading.Event()
            th = install_all(api, ctl.url, hosts["installs"], "abuse", args.install_timeout, res["installs"], gate)
            wait_in_progress(res["installs"], "abuse", 30)
            with phases.phase("abuse"):
                assert ctl.proc is not None
                cpu0 = {"controller": cpu_seconds(ctl.proc.pid), "healthz poller": cpu_seconds(poller.pid),
                        "bench (flood, installers, curl)": own_cpu_seconds(), "wall": time.monotonic()}
                flood.open()
                flood_stop = threading.Event()
                flood_th = threading.Thread(target=flood.run, args=(flood_stop, args.flood_interval), daemon=True)
                with child(work, "api", load_cfg) as (loader, load_out):
                    flood_th.start()
                    time.sleep(min(3.0, args.seconds / 4))
                    gate.set()
                    res["api"] = read_out(loader, load_out, args.seconds + 30)
                flood_stop.set()
                flood_th.join(args.flood_interval + 5)
                res["installs_done_in_abuse"] = not th.is_alive()
                cpu1 = {"controller": cpu_seconds(ctl.proc.pid), "healthz poller": cpu_seconds(poller.pid),
                        "bench (flood, installers, curl)": own_cpu_seconds(), "wall": time.monotonic()}
                res["cpu"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
                res["cpu"]["API clients"] = res["api"].get("cpu_s", float("nan"))
            th.join(args.install_timeout)  # an install still running when the load stops must still finish
            with phases.phase("idle (after)"):
                time.sleep(args.idle)
            stop_all.set()
            (work / "healthz.stop").touch()
            res["healthz"] = read_out(poller, poll_out, 15).get("samples", [])
            tftp_th.join(25)
        log = ctl.log_tail(chars=50_000_000)
        res["tracebacks"] = log.count("Traceback (most recent call last)")
        res["log_lines"] = log.count("\n")
        api.close()
    finally:
        stop_all.set()
        flood.close()
        ctl.stop()
        sshd.stop()
        bmcs.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the abuse phase")
    ap.add_argument("--idle", type=float, default=12.0, help="length of each idle phase")
    ap.add_argument("--clients", type=int, default=200, help="authenticated API clients under abuse")
    ap.add_argument("--power-clients", type=int, default=40, help="of those, asking dead/slow BMCs")
    ap.add_argument("--anon", type=int, default=20, help="unauthenticated clients (boot scripts, install routes)")
    ap.add_argument("--dead", type=int, default=100, help="hosts with dead BMCs (half closed, half silent)")
    ap.add_argument("--manual", type=int, default=50, help="hosts on the manual power driver")
    ap.add_argument("--installs", type=int, default=5, help="of those, installed in each phase")
    ap.add_argument("--flood", type=int, default=1000, help="silent TFTP sockets")
    ap.add_argument("--flood-single", type=int, default=200, help=f"of those, bound to {FLOOD_SINGLE}")
    ap.add_argument("--flood-interval", type=float, default=5.0, help="seconds between RRQ waves")
    ap.add_argument("--bmc-timeout", type=float, default=4.0, help="the controller's power_call_timeout")
    ap.add_argument("--healthz-every", type=float, default=0.05)
    ap.add_argument("--tftp-every", type=float, default=2.0)
    ap.add_argument("--install-timeout", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the controller's log)")
    args = ap.parse_args()
    for binary in ("curl", "ssh-keyscan", "/usr/sbin/sshd"):
        if not shutil.which(binary):
            print(f"bench/abuse needs {binary}", file=sys.stderr)
            return 2
    if args.installs > args.manual:
        ap.error("--installs must not exceed --manual")
    from bench.abuse_report import report

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="prov-bench-abuse-"))
    try:
        res = run(args, work)
        return report(args, res, load_start)
    finally:
        if args.keep:
            print(f"work directory kept: {work} (controller log: {work / 'data-serve.log'})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
