"""bench/scale part 3: hosts through an install per minute, and the controller's CPU per install.

Only the install's public surface is used, so the same code measures today's
thread runner and, once the workflow engine lands, ``--role conductor`` processes:

  POST /api/v1/hosts (manual power: no BMC, the install's power steps are
  operator requests) + verify, then per round: POST /hosts/NAME/install for
  every host, and the bench plays each installer over HTTP as
  tests/integration/install/ does (tests.support.install_faults.Installer: the
  per-MAC iPXE script, the preseed with its token, the start report, a
  progress event, the done report) as soon as the host lists as install-wait;
  one real sshd on 127.0.0.1 is every host's installed OS (the controller's
  SSH wait and ssh-keyscan run for real). A round ends when every host is active.

Topologies (sides), alternated round by round:
  single       one ``prov serve`` (every role) on PostgreSQL: today's shape
  1 conductor  ``prov serve --role api`` + one ``prov serve --role conductor``
  2 conductors the same with two conductors
The conductor sides are run only when this checkout has the engine
(provisioner/conductor/engine.py, DBOS): with the thread runner an install runs
in the API process that accepted it, so a conductor process would have nothing to do.
``--baseline-tree DIR`` adds a side "single (DIR)": the same single process from
another checkout (e.g. a git worktree of the last commit with the old runner),
for the engine's overhead against the old runner in the same run.

Controller CPU = the CPU of every prov process of the side (with their reaped
children: ssh-keyscan) during the round; PostgreSQL's separately.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.scale import stats
from bench.scale.procs import ROOT, Meter, RoleServer, own_cpu_s, stop_all
from tests.support.helpers import free_port
from tests.support.install_faults import Installer, Sshd

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghij bench@prov"


def has_engine() -> bool:
    conductor = ROOT / "provisioner" / "conductor"
    return (conductor / "engine.py").exists() or (conductor / "engine" / "__init__.py").exists()  # a package


@dataclass
class Side:
    name: str
    servers: list[RoleServer]
    url: str = ""
    token: str = ""
    rounds: list[dict[str, float]] = field(default_factory=list)


def _ok(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:300]}")
    return resp


def _mac(i: int) -> str:
    return f"52:54:00:5c:{i // 256:02x}:{i % 256:02x}"


def enrol(api: httpx.Client, n: int, ssh_port: int) -> dict[str, str]:
    _ok(api.post("/api/v1/profiles", json={
        "name": "bench-deb", "os_family": "debian", "install_method": "preseed",
        "kernel_url": "images/debian/linux", "initrd_url": "images/debian/initrd.gz", "kernel_args": "console=ttyS0",
        "params": {"ssh_authorized_keys": [SSH_KEY], "ssh_port": ssh_port}}))
    hosts = {f"w{i:04d}": _mac(i) for i in range(n)}

    def one(item: tuple[str, str]) -> None:
        name, mac = item
        _ok(api.post("/api/v1/hosts", json={"name": name, "bmc": {"kind": "manual"}, "profile": "bench-deb",
                                            "ip_address": "127.0.0.1",
                                            "nics": [{"mac": mac, "name": "eth0", "boot": True, "ip": "127.0.0.1"}]}))
        _ok(api.post(f"/api/v1/hosts/{name}/verify"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, hosts.items()))
    return hosts


def _count(api: httpx.Client, state: str) -> tuple[int, list[str]]:
    r = _ok(api.get("/api/v1/hosts", params={"state": state, "limit": 1000}))
    body = r.json()
    return int(body["count"]), [h["name"] for h in body["data"]]


def install_round(side: Side, hosts: dict[str, str], meter: Meter, timeout: float, players: int) -> dict[str, float]:
    api = httpx.Client(base_url=side.url, headers={"Authorization": f"Bearer {side.token}"}, timeout=60)
    played: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def play(name: str) -> None:
        try:
            Installer(side.url, hosts[name]).netboot().install()
        except (AssertionError, httpx.HTTPError) as exc:
            # a busy machine times a request out (the Installer's 10 s): the host still waits in
            # install-wait, so it is played again, as a real installer's retry or a reboot would
            with lock:
                errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:160]}")
            time.sleep(1.0)
            with lock:
                played.discard(name)

    def request(name: str) -> None:
        r = api.post(f"/api/v1/hosts/{name}/install", json={})
        if r.status_code != 202:
            with lock:
                errors.append(f"{name}: install {r.status_code} {r.text[:160]}")

    before, bench0, t0 = meter.read(), own_cpu_s(), time.monotonic()
    active = failed = 0
    with ThreadPoolExecutor(players, thread_name_prefix="installer") as pool:
        list(pool.map(request, hosts))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, waiting = _count(api, "install-wait")
            for name in waiting:
                with lock:
                    new = name not in played
                    played.add(name)
                if new:
                    pool.submit(play, name)
            active, _ = _count(api, "active")
            failed, _ = _count(api, "install-failed")
            if active + failed >= len(hosts):
                break
            time.sleep(0.5)
    wall = time.monotonic() - t0
    cpu = Meter.delta(before, meter.read())
    api.close()
    ctl = sum(v for k, v in cpu.items() if k not in ("postgres", "machine"))
    n = max(active, 1)
    res = {"wall": wall, "active": active, "failed": failed, "hosts_per_min": stats.per_minute(active, wall),
           "ctl_ms": ctl * 1000 / n, "pg_ms": cpu["postgres"] * 1000 / n,
           "bench_ms": (own_cpu_s() - bench0) * 1000 / n, "ctl_cores": ctl / wall,
           "machine_cores": cpu["machine"] / wall}
    if errors:
        res["errors"] = len(errors)
        print(f"#   {len(errors)} installer/request errors (installers retried), first: {errors[0]}", flush=True)
    return res


def _settings(db_url: str) -> dict[str, object]:
    # long deadlines: a busy 2-core machine must not time out a healthy install (as tests/integration/install)
    # rate_limit_exempt: every installer the bench plays comes from 127.0.0.1, where a rack's come from
    # one address each; the per-address boot-script limit (2/s, burst 120) would otherwise be the figure
    return {"database_url": db_url, "power_sync_enabled": False, "install_wait_timeout": 600.0,
            "ssh_wait_timeout": 600.0, "log_level": "WARNING", "rate_limit_exempt": '["127.0.0.0/8"]'}


def make_side(work: Path, pg: Any, name: str, conductors: int, tree: Path | None = None) -> Side:
    db_url = pg.url(pg.create_database())
    env = {"PYTHONPATH": str(tree)} if tree else None
    base = work / name.replace(" ", "-").replace("(", "").replace(")", "").replace("/", "_")
    if conductors == 0:
        return Side(name, [RoleServer(base / "all", settings=_settings(db_url), extra_env=env)])
    servers = [RoleServer(base / "api", args=["--role", "api"], settings=_settings(db_url), extra_env=env)]
    servers += [RoleServer(base / f"conductor{k}", args=["--role", "conductor"], settings=_settings(db_url),
                           extra_env=env, ready=None) for k in range(conductors)]
    return Side(name, servers)


def run(work: Path, pg: Any, pg_pid: int, *, hosts: int, rounds: int, timeout: float, players: int,
        baseline_tree: Path | None = None) -> dict[str, Any]:
    sshd = Sshd(work / "sshd", free_port())
    sides = [make_side(work, pg, "single", 0)]
    if has_engine():
        sides += [make_side(work, pg, "1 conductor", 1), make_side(work, pg, "2 conductors", 2)]
    if baseline_tree is not None:
        sides.append(make_side(work, pg, f"single ({baseline_tree.name})", 0, baseline_tree))
    started: list[RoleServer] = []
    try:
        sshd.start()
        t0 = time.monotonic()
        for side in sides:
            for s in side.servers:
                started.append(s)
                s.start(timeout=120)
            side.url = side.servers[0].url
            side.token = side.servers[0].first_token()
            with httpx.Client(base_url=side.url, headers={"Authorization": f"Bearer {side.token}"},
                              timeout=60) as api:
                side_hosts = enrol(api, hosts, sshd.port)
        setup_s = time.monotonic() - t0
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                pids = {f"p{k}": s.proc.pid for k, s in enumerate(side.servers) if s.proc is not None}
                meter = Meter({**pids, "postgres": pg_pid})
                side.rounds.append(install_round(side, side_hosts, meter, timeout, players))
                last = side.rounds[-1]
                print(f"#   round {r + 1} {side.name}: {last['active']}/{hosts} active in {last['wall']:.1f} s, "
                      f"{last['hosts_per_min']:.0f} hosts/min, controller {last['ctl_ms']:.0f} ms/install", flush=True)
        return {"sides": sides, "hosts": hosts, "setup_s": setup_s, "engine": has_engine(), "players": players}
    finally:
        stop_all(started)
        sshd.stop()


def report(res: dict[str, Any]) -> list[str]:
    sides: list[Side] = res["sides"]
    out = [f"Workflow (part 3): {res['hosts']} hosts (manual power) per round through POST install + the "
           f"installer played over HTTP ({res['players']} player threads) + real sshd/ssh-keyscan; "
           f"{'engine' if res['engine'] else 'old thread runner (no engine in this checkout: single process only)'}",
           "  min / median / max over the rounds",
           f"  {'side':22} {'hosts/min':>20} {'wall s':>20} {'controller ms/install':>24} {'postgres ms/install':>22}"
           f" {'bench ms/install':>18} {'machine cores':>20}"]
    for s in sides:
        rr = s.rounds
        out.append(f"  {s.name:22} {stats.fmt_summary([r['hosts_per_min'] for r in rr], 0):>20} "
                   f"{stats.fmt_summary([r['wall'] for r in rr], 1):>20} "
                   f"{stats.fmt_summary([r['ctl_ms'] for r in rr], 0):>24} "
                   f"{stats.fmt_summary([r['pg_ms'] for r in rr], 0):>22} "
                   f"{stats.fmt_summary([r['bench_ms'] for r in rr], 0):>18} "
                   f"{stats.fmt_summary([r['machine_cores'] for r in rr], 2):>20}")
        bad = sum(r["failed"] for r in rr) + sum(r.get("errors", 0) for r in rr)
        if bad or any(r["active"] < res["hosts"] for r in rr):
            out.append(f"    {s.name}: {bad} failures/errors, active per round {[int(r['active']) for r in rr]}")
    by = {s.name: s for s in sides}
    if "1 conductor" in by and "2 conductors" in by:
        rr = stats.paired_ratios([r["hosts_per_min"] for r in by["2 conductors"].rounds],
                                 [r["hosts_per_min"] for r in by["1 conductor"].rounds])
        out.append(f"  ratio 2 conductors / 1 conductor hosts/min: {stats.fmt_summary(rr, 2)} (target >= 1.8x)")
    base = [s for s in sides if s.name.startswith("single (")]
    if base:
        rr = stats.paired_ratios([r["ctl_ms"] for r in by["single"].rounds], [r["ctl_ms"] for r in base[0].rounds])
        out.append(f"  controller CPU per install, this checkout / {base[0].name}: {stats.fmt_summary(rr, 2)}")
    out.append("  target: controller CPU per install < 50 ms (controller = every prov process of the side, their "
               "reaped children (ssh-keyscan) included; bench = this process: the installers and the polling)")
    return out
