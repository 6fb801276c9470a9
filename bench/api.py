"""bench/api: the REST API under load, on SQLite and PostgreSQL, against a bare FastAPI endpoint.

Seeds 10,000 hosts (10 racks, one NIC each), starts ``uvicorn`` on loopback
in a separate process, and drives it with ``wrk``:

* latency (1 connection, sequential): p50/p99 of a 100-host page and of three
  filtered queries, each next to a bare FastAPI endpoint *in the same server
  process* that returns a static payload of exactly the same bytes;
* throughput: requests/s of a mixed load (20 % PATCH, 80 % reads) against the
  same mix of bare endpoints.

Ratios are prov / bare (latency: lower is better; req/s: higher is better).
Usage: ``.venv/bin/python bench/api.py [--hosts 10000] [--seconds 4] [--backend sqlite,postgres]``
Needs ``wrk`` (apt-get install wrk) and, for PostgreSQL, the postgresql server package.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner import auth, migrate  # noqa: E402
from provisioner import states as S  # noqa: E402
from provisioner.db import get_engine  # noqa: E402
from provisioner.settings import Settings  # noqa: E402

QUERIES = {
    "page": "/api/v1/hosts?limit=100&offset=5000",
    "state+rack": "/api/v1/hosts?state=maintenance&rack=rack03&limit=100",
    "role": "/api/v1/hosts?role=db&limit=100&offset=1000",
    "power+sort": "/api/v1/hosts?power_state=on&sort=-updated_at&limit=100",
}


# --------------------------------------------------------------------------- server side
def server_app() -> Any:
    """uvicorn --factory target: prov's app plus the bare endpoints (same process, same middleware)."""
    from fastapi import Response

    from provisioner.api.app import create_app

    app = create_app()
    app.state.start_services = False
    payload_dir = Path(os.environ["PROV_BENCH_PAYLOADS"])
    cache: dict[str, bytes] = {}

    @app.api_route("/bare/{name}", methods=["GET", "PATCH"], include_in_schema=False)
    def bare(name: str) -> Response:
        body = cache.get(name)
        if body is None:
            body = cache[name] = (payload_dir / f"{name}.json").read_bytes()
        return Response(body, media_type="application/json")

    return app


# --------------------------------------------------------------------------- seeding
def seed(settings: Settings, n: int) -> str:
    from sqlmodel import Session

    from provisioner.models import Host, Nic, Profile, Rack

    migrate.upgrade(settings)
    rng = random.Random(42)
    engine = get_engine(settings)
    with Session(engine) as s:
        racks = [Rack(name=f"rack{i:02d}", size_u=42) for i in range(10)]
        profile = Profile(name="debian12")
        s.add_all([*racks, profile])
        s.commit()
        rack_ids = [r.id for r in racks]
        # Seeding writes states directly (bulk fixture data), not through lifecycle.advance.
        states = [S.ACTIVE] * 7 + [S.AVAILABLE] * 2 + [S.MAINTENANCE]
        hosts = []
        for i in range(n):
            hosts.append(Host(
                name=f"h{i:05d}", rack_id=rack_ids[i % 10], u_position=i % 42 + 1,
                roles=rng.sample(["web", "db", "docker", "k8s", "cache"], 2), profile_id=profile.id,
                state=rng.choice(states), power_state=rng.choice([S.POWER_ON, S.POWER_ON, S.POWER_OFF]),
                bmc_kind="ipmi", bmc_address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", bmc_port=623,
                bmc_username="admin",
            ))
        s.add_all(hosts)
        s.flush()
        s.add_all([Nic(host_id=h.id or 0, mac=f"52:54:00:{i // 65536:02x}:{i // 256 % 256:02x}:{i % 256:02x}",
                       boot=True) for i, h in enumerate(hosts)])
        s.commit()
        token = auth.create_token(s, name="bench")
    # Planner statistics as autovacuum (PostgreSQL) or a periodic ANALYZE (SQLite) would have them;
    # right after a bulk load PostgreSQL otherwise guesses 800 rows and sorts instead of using indexes.
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return token


# --------------------------------------------------------------------------- wrk
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, token: str, seconds: float, connections: int = 1, script: Path | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-H", f"Authorization: Bearer {token}"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    res: dict[str, float] = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            res[f"p{pct}"] = _ms(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["errors"] = float(m.group(1)) if m else 0.0
    return res


MIX_LUA = """
math.randomseed(%(seed)d)
wrk.headers["Content-Type"] = "application/json"
local bare = %(bare)s
request = function()
  local r = math.random(100)
  local i = math.random(0, %(last)d)
  if r <= 20 then
    if bare then return wrk.format("PATCH", "/bare/host", nil, '{"roles":["web"]}') end
    return wrk.format("PATCH", string.format("/api/v1/hosts/h%%05d", i), nil,
                      string.format('{"roles":["web","r%%d"]}', math.random(9)))
  elseif r <= 50 then
    if bare then return wrk.format("GET", "/bare/page") end
    return wrk.format("GET", "/api/v1/hosts?limit=100&offset=" .. math.random(0, %(last)d - 100))
  elseif r <= 70 then
    if bare then return wrk.format("GET", "/bare/state+rack") end
    return wrk.format("GET", "/api/v1/hosts?state=maintenance&rack=rack03&limit=100")
  else
    if bare then return wrk.format("GET", "/bare/host") end
    return wrk.format("GET", string.format("/api/v1/hosts/h%%05d", i))
  end
end
"""


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """user+system CPU seconds of one process (fields 14 and 15 of /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


class CpuMeter:
    """CPU seconds spent serving: the uvicorn process plus, for PostgreSQL, its backends.

    CPU per request barely depends on how busy the machine is, unlike wall-clock latency,
    so it is the figure to compare when the benchmark shares the machine with other work.
    """

    def __init__(self, server_pid: int, pg_postmaster: int | None) -> None:
        self.server_pid = server_pid
        self.pg_postmaster = pg_postmaster

    def read(self) -> float:
        total = _cpu_s(self.server_pid)
        if self.pg_postmaster:
            # backends exit and are replaced, but the pool keeps its connections open for the run
            total += sum(_cpu_s(p) for p in [self.pg_postmaster, *_children(self.pg_postmaster)])
        return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_backend(name: str, settings: Settings, n: int, seconds: float, workdir: Path,
                pg_postmaster: int | None = None) -> list[tuple[str, ...]]:
    t0 = time.monotonic()
    token = seed(settings, n)
    seed_s = time.monotonic() - t0
    payloads = workdir / f"payloads-{name}"
    payloads.mkdir()
    port = _free_port()
    env = {**os.environ, "PROV_DATA_DIR": str(settings.data_dir), "PROV_BENCH_PAYLOADS": str(payloads),
           "PYTHONPATH": str(ROOT), "PROV_LOG_LEVEL": "WARNING"}
    if settings.database_url:
        env["PROV_DATABASE_URL"] = settings.database_url
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bench.api:server_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, cwd=ROOT,
    )
    rows: list[tuple[str, ...]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("bench server did not start")
            time.sleep(0.2)
        for qname, path in QUERIES.items():
            r = httpx.get(base + path, headers=headers, timeout=30)
            r.raise_for_status()
            (payloads / f"{qname}.json").write_bytes(r.content)
        r = httpx.get(f"{base}/api/v1/hosts/h00042", headers=headers)
        (payloads / "host.json").write_bytes(r.content)
        meter = CpuMeter(server.pid, pg_postmaster)

        def measured(url: str, secs: float, **kw: Any) -> dict[str, float]:
            before = meter.read()
            res = wrk(url, token, secs, **kw)
            res["cpu_ms"] = (meter.read() - before) * 1000 / max(res["requests"], 1)
            return res

        for qname, path in QUERIES.items():
            size = (payloads / f"{qname}.json").stat().st_size
            ours = measured(base + path, seconds)
            bare = measured(f"{base}/bare/{qname}", seconds)
            rows.append((name, f"GET {qname} ({size // 1024} KiB)", f"{ours['p50']:.2f}", f"{ours['p99']:.2f}",
                         f"{bare['p50']:.2f}", f"{bare['p99']:.2f}",
                         f"{ours['p50'] / bare['p50']:.1f}x", f"{ours['p99'] / bare['p99']:.1f}x",
                         f"{ours['cpu_ms']:.2f}", f"{bare['cpu_ms']:.2f}", f"{ours['cpu_ms'] / bare['cpu_ms']:.1f}x"))
        results = {}
        for bare_flag in ("false", "true"):
            script = workdir / f"mix-{name}-{bare_flag}.lua"
            script.write_text(MIX_LUA % {"seed": 7, "bare": bare_flag, "last": n - 1})
            results[bare_flag] = measured(base + "/", seconds * 2, connections=8, script=script)
        ours, bare = results["false"], results["true"]
        rows.append((name, "mixed 20% PATCH, 8 conn (req/s)", f"{ours['rps']:.0f}", f"err={ours['errors']:.0f}",
                     f"{bare['rps']:.0f}", "", f"{ours['rps'] / bare['rps']:.2f}x", f"p99 {ours['p99']:.1f}ms",
                     f"{ours['cpu_ms']:.2f}", f"{bare['cpu_ms']:.2f}", f"{ours['cpu_ms'] / bare['cpu_ms']:.1f}x"))
        rows.append((name, f"seed {n} hosts (s)", f"{seed_s:.1f}", "", "", "", "", "", "", "", ""))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=4.0, help="per latency measurement (mixed load: twice that)")
    ap.add_argument("--backend", default="sqlite,postgres")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    if shutil.which("wrk") is None:
        sys.exit("bench/api needs wrk: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="prov-bench-"))
    rows: list[tuple[str, ...]] = []
    try:
        for backend in args.backend.split(","):
            data_dir = workdir / backend
            data_dir.mkdir()
            if backend == "sqlite":
                rows += run_backend("sqlite", Settings(data_dir=data_dir), args.hosts, args.seconds, workdir)
            elif backend == "postgres":
                from tests.support import pg

                with pg.running() as server:
                    dbname = server.create_database()
                    settings = Settings(data_dir=data_dir, database_url=server.url(dbname))
                    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
                    rows += run_backend("postgres", settings, args.hosts, args.seconds, workdir, postmaster)
                    get_engine(settings).dispose()
            else:
                sys.exit(f"unknown backend {backend}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = ("backend", "measure", "prov p50 ms", "prov p99 ms", "bare p50 ms", "bare p99 ms", "ratio p50",
              "ratio p99", "prov cpu ms/req", "bare cpu ms/req", "ratio cpu")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\nmixed row: prov req/s | non-2xx | bare req/s | - | ratio prov/bare (higher is better) | prov p99 | cpu")
    print(f"load average at the start: {load_start:.1f}, at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(wall-clock figures are only meaningful on an otherwise idle machine; CPU ms/req much less so)")


if __name__ == "__main__":
    main()
