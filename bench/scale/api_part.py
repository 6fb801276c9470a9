"""bench/scale part 1: the API role with 1 and 4 uvicorn workers on PostgreSQL, against a bare FastAPI app.

10,000 hosts seeded (bench/api.seed: 10 racks, one NIC each), four servers up at
once on one database: ``prov serve --role api --workers 1``, the same with 4
workers, and the bare app (bench/scale/bare.py) with 1 and 4 workers. Rounds
alternate the sides (prov 1w, prov 4w, bare 1w, bare 4w; the next round in the
opposite order), each a ``wrk`` run of the same mix:

  80 % reads: 40 % a page of 100 hosts (random offset), 40 % one host by name
  20 % writes: 10 % PATCH a host's roles, 10 % a rack created or deleted (each
       wrk run creates its own racks and deletes them LAG rack operations later,
       so a delete never races its create)

and a 1-connection page run per prov side for the page's own p99. Each run's CPU
is read from /proc: the server's process tree, PostgreSQL's (postmaster and
backends, reaped ones included) and wrk's (RUSAGE_CHILDREN), so the reader sees
whether the 2 cores were the limit.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.api import seed, wrk
from bench.scale import stats
from bench.scale.procs import Meter, RoleServer, children_cpu_s, serve_supports, stop_all, uvicorn_argv
from provisioner.settings import Settings

LAG = 64
MIX_LUA = """
math.randomseed(%(seed)d)
wrk.headers["Content-Type"] = "application/json"
local bare = %(bare)s
local tag = "%(tag)s"
local created, deleted = 0, 0
local function rackop()
  if created - deleted > %(lag)d then
    deleted = deleted + 1
    if bare then return wrk.format("DELETE", "/bare/racks/x") end
    return wrk.format("DELETE", string.format("/api/v1/racks/%%s-%%d", tag, deleted))
  end
  created = created + 1
  if bare then return wrk.format("POST", "/bare/racks", nil, '{"name":"x"}') end
  return wrk.format("POST", "/api/v1/racks", nil, string.format('{"name":"%%s-%%d"}', tag, created))
end
request = function()
  local r = math.random(100)
  local i = math.random(0, %(last)d)
  if r <= 40 then
    if bare then return wrk.format("GET", "/bare/page") end
    return wrk.format("GET", "/api/v1/hosts?limit=100&offset=" .. math.random(0, %(last)d - 100))
  elseif r <= 80 then
    if bare then return wrk.format("GET", "/bare/host") end
    return wrk.format("GET", string.format("/api/v1/hosts/h%%05d", i))
  elseif r <= 90 then
    if bare then return wrk.format("PATCH", "/bare/host", nil, '{"roles":["web"]}') end
    return wrk.format("PATCH", string.format("/api/v1/hosts/h%%05d", i), nil,
                      string.format('{"roles":["web","r%%d"]}', math.random(9)))
  else
    return rackop()
  end
end
"""
PAGE_LUA = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "/api/v1/hosts?limit=100&offset=" .. math.random(0, %(last)d - 100))
end
"""


@dataclass
class Side:
    name: str
    server: RoleServer
    runs: list[dict[str, float]] = field(default_factory=list)
    page_runs: list[dict[str, float]] = field(default_factory=list)


def _launch(work: Path, db_url: str, workers: int, launcher: str) -> RoleServer:
    settings = {"database_url": db_url, "power_sync_enabled": False}
    if launcher == "prov":
        return RoleServer(work / f"prov{workers}w", args=["--role", "api", "--workers", str(workers)],
                          settings=settings)
    # Before --role api --workers landed: the app factory under uvicorn's own workers.
    return RoleServer(work / f"prov{workers}w", argv=uvicorn_argv("provisioner.api.app:create_app", workers),
                      settings=settings)


def _capture(url: str, token: str, out: Path) -> None:
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=h, timeout=30) as c:
        page = c.get("/api/v1/hosts?limit=100&offset=5000")
        page.raise_for_status()
        (out / "page.json").write_bytes(page.content)
        (out / "host.json").write_bytes(c.get("/api/v1/hosts/h00042").content)
        rack = c.post("/api/v1/racks", json={"name": "bench-capture"})
        rack.raise_for_status()
        (out / "rack.json").write_bytes(rack.content)
        c.delete("/api/v1/racks/bench-capture")


def _measure(side: Side, meter: Meter, url: str, token: str, seconds: float, connections: int,
             script: Path) -> dict[str, float]:
    before, wrk0, t0 = meter.read(), children_cpu_s(), time.monotonic()
    res = wrk(url, token, seconds, connections=connections, script=script)
    wall = time.monotonic() - t0
    cpu = Meter.delta(before, meter.read())
    res.update(wall=wall, server_cpu=cpu[side.name], pg_cpu=cpu["postgres"], wrk_cpu=children_cpu_s() - wrk0,
               machine_cpu=cpu["machine"])
    return res


def run(work: Path, pg: Any, pg_pid: int, *, hosts: int, rounds: int, seconds: float, page_seconds: float,
        connections: int, launcher: str = "auto") -> dict[str, Any]:
    if launcher == "auto":
        launcher = "prov" if serve_supports("--workers") else "uvicorn"
    db = pg.create_database()
    data = work / "seed"
    data.mkdir(parents=True)
    settings = Settings(data_dir=data, database_url=pg.url(db))
    t0 = time.monotonic()
    token = seed(settings, hosts)
    seed_s = time.monotonic() - t0
    payloads = work / "payloads"
    payloads.mkdir()
    servers: list[RoleServer] = []
    try:
        p1 = _launch(work, pg.url(db), 1, launcher)
        p4 = _launch(work, pg.url(db), 4, launcher)
        for s in (p1, p4):
            servers.append(s)
            s.start(timeout=120)
        _capture(p1.url, token, payloads)
        env = {"PROV_BENCH_PAYLOADS": str(payloads)}
        b1 = RoleServer(work / "bare1w", argv=uvicorn_argv("bench.scale.bare:app", 1), extra_env=env)
        b4 = RoleServer(work / "bare4w", argv=uvicorn_argv("bench.scale.bare:app", 4), extra_env=env)
        for s in (b1, b4):
            servers.append(s)
            s.start(timeout=60)
        sides = [Side("prov 1w", p1), Side("prov 4w", p4), Side("bare 1w", b1), Side("bare 4w", b4)]
        pids = {s.name: s.server.proc.pid for s in sides if s.server.proc is not None}
        meter = Meter({**pids, "postgres": pg_pid})
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                bare = side.name.startswith("bare")
                script = work / f"mix-{r}-{side.name.replace(' ', '')}.lua"
                script.write_text(MIX_LUA % {"seed": 7 + r, "bare": str(bare).lower(), "last": hosts - 1,
                                             "lag": LAG, "tag": f"bx{r}{side.name[-2]}{'b' if bare else 'p'}"})
                side.runs.append(_measure(side, meter, side.server.url + "/", token, seconds, connections, script))
                print(f"#   round {r + 1} {side.name}: {side.runs[-1]['rps']:.0f} req/s", flush=True)
            for side in (order if r % 2 == 0 else order[::-1]):
                if side.name.startswith("prov"):
                    script = work / f"page-{r}.lua"
                    script.write_text(PAGE_LUA % {"seed": 11 + r, "last": hosts - 1})
                    side.page_runs.append(_measure(side, meter, side.server.url + "/", token, page_seconds, 1,
                                                   script))
        return {"sides": sides, "seed_s": seed_s, "hosts": hosts, "launcher": launcher, "connections": connections,
                "seconds": seconds}
    finally:
        stop_all(servers)
        from provisioner.db import get_engine

        get_engine(settings).dispose()


def report(res: dict[str, Any]) -> list[str]:
    sides: list[Side] = res["sides"]
    by = {s.name: s for s in sides}
    launcher = ("prov serve --role api --workers N" if res["launcher"] == "prov"
                else "uvicorn --factory create_app --workers N (fallback)")
    out = [f"API (part 1): {res['hosts']} hosts on PostgreSQL, seeded in {res['seed_s']:.0f} s; launcher: {launcher}; "
           f"wrk -t1 -c{res['connections']} {res['seconds']:g} s per run, {len(sides[0].runs)} round(s) "
           "alternating the sides",
           "  mixed 80 % reads (page of 100, host by name) / 20 % writes (PATCH host, rack create+delete)",
           "  min / median / max over the rounds"]
    head = (f"  {'side':8} {'req/s':>22} {'p50 ms':>20} {'p99 ms':>22} {'non-2xx':>8}  "
            "CPU cores: server / postgres / wrk / machine")
    out.append(head)
    for s in sides:
        cpu_txt = " / ".join(f"{stats.summary([r[k] / r['wall'] for r in s.runs])[1]:.2f}"
                             for k in ("server_cpu", "pg_cpu", "wrk_cpu", "machine_cpu"))
        out.append(f"  {s.name:8} {stats.fmt_summary([r['rps'] for r in s.runs], 0):>22} "
                   f"{stats.fmt_summary([r.get('p50', math.nan) for r in s.runs], 1):>20} "
                   f"{stats.fmt_summary([r.get('p99', math.nan) for r in s.runs], 1):>22} "
                   f"{sum(r['errors'] for r in s.runs):>8.0f}  {cpu_txt} (median)")
    def rps(name: str) -> list[float]:
        return [r["rps"] for r in by[name].runs]

    scale = stats.paired_ratios(rps("prov 4w"), rps("prov 1w"))
    bare_scale = stats.paired_ratios(rps("bare 4w"), rps("bare 1w"))
    out.append(f"  ratio prov 4w/1w req/s (per round): {stats.fmt_summary(scale, 2)}   (target >= 2.5x; "
               f"bare 4w/1w on the same cores: {stats.fmt_summary(bare_scale, 2)})")
    for w in ("1w", "4w"):
        rr = stats.paired_ratios(rps(f"prov {w}"), rps(f"bare {w}"))
        out.append(f"  ratio prov/bare req/s {w}: {stats.fmt_summary(rr, 3)}")
    best = max(stats.summary(rps("prov 4w"))[1], 0)
    out.append(f"  prov 4w median {best:.0f} req/s (target >= 500)")
    for s in sides:
        if s.page_runs:
            cpu_ms = [r["server_cpu"] * 1000 / max(r["requests"], 1) for r in s.page_runs]
            out.append(f"  page of 100 at {res['hosts']} hosts, 1 connection, {s.name}: p50 "
                       f"{stats.fmt_summary([r['p50'] for r in s.page_runs], 1)} ms, p99 "
                       f"{stats.fmt_summary([r['p99'] for r in s.page_runs], 1)} ms (target < 50), "
                       f"server CPU {stats.fmt_summary(cpu_ms, 1)} ms/req")
    mix_cpu = [r["server_cpu"] * 1000 / max(r["requests"], 1) for r in by["prov 1w"].runs]
    bare_cpu = [r["server_cpu"] * 1000 / max(r["requests"], 1) for r in by["bare 1w"].runs]
    pg_cpu = [r["pg_cpu"] * 1000 / max(r["requests"], 1) for r in by["prov 1w"].runs]
    out.append(f"  CPU per mixed request, 1w: prov {stats.fmt_summary(mix_cpu, 2)} ms + postgres "
               f"{stats.fmt_summary(pg_cpu, 2)} ms; bare {stats.fmt_summary(bare_cpu, 2)} ms")
    per_req = stats.summary(mix_cpu)[1] + stats.summary(pg_cpu)[1]
    cores = os.cpu_count() or 1
    out.append(f"  CPU-bound ceiling on this machine: {cores} cores / {per_req:.2f} ms per request (prov + postgres) = "
               f"{cores * 1000 / per_req:.0f} req/s, if nothing else ran (machine column: every process's use; "
               f"{cores:.2f} = all cores busy)")
    return out
