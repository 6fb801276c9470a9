"""bench/scale: issue 14's performance figures, each ratio's two sides alternated in one run.

    nice .venv/bin/python -m bench.scale [--quick] [--parts api,power,workflow] [--baseline-tree DIR]

One private PostgreSQL (tests.support.pg, a temp dir) for the whole run, a
database per part. Parts (see each module's docstring):

  api       bench/scale/api_part.py: prov serve --role api --workers 1 vs 4, mixed load, vs a bare FastAPI app
  power     bench/scale/power_part.py: one power-sync round of 10,000 hosts, seen from the BMCs
  workflow  bench/scale/workflow_part.py: installs per minute, controller CPU per install

Not timed tests: figures are printed as min / median / max over the rounds, the
targets next to them, and the CPU each side (and the load generators) used,
because this is a 2-core machine shared with other work: wall-clock figures
are what this machine did, not what prov can do on a free one.
Full run about 10 minutes, --quick about 2.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.scale import api_part, power_part, workflow_part  # noqa: E402
from bench.scale.procs import postmaster_pid  # noqa: E402
from tests.support import pg  # noqa: E402

PRESETS = {
    # api_seconds, api_rounds, page_seconds, power_hosts, power_interval, wf_hosts, wf_rounds
    "full": dict(api_seconds=8.0, api_rounds=3, page_seconds=4.0, power_hosts=10_000, power_interval=120.0,
                 wf_hosts=150, wf_rounds=3),
    "quick": dict(api_seconds=4.0, api_rounds=1, page_seconds=3.0, power_hosts=2_000, power_interval=20.0,
                  wf_hosts=40, wf_rounds=1),
}


def _now(lines: list[str]) -> list[str]:
    """A part's report printed as soon as it is done (and again at the end, with the others)."""
    print("\n".join(lines), flush=True)
    return lines


def _rerun_from_snapshot() -> int:
    """This same command again, from a copy of HEAD (the bench's own code included)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    snap = Path(tempfile.mkdtemp(prefix=f"prov-bench-scale-{commit}-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, check=True)
        print(f"# measuring commit {commit} (exported to {snap})", flush=True)
        env = {**os.environ, "PROV_BENCH_SNAPSHOT": commit, "PYTHONPATH": str(snap)}
        return subprocess.run([sys.executable, "-m", "bench.scale", *sys.argv[1:]], cwd=snap, env=env).returncode
    finally:
        shutil.rmtree(snap, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 2 minutes: one round each, shorter runs")
    ap.add_argument("--parts", default="api,power,workflow")
    ap.add_argument("--hosts", type=int, default=10_000, help="hosts seeded for the API part")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections of the mixed load")
    ap.add_argument("--launcher", choices=("auto", "prov", "uvicorn"), default="auto",
                    help="api workers through prov serve --role api --workers N, or uvicorn on the app factory")
    ap.add_argument("--power-hosts", type=int)
    ap.add_argument("--power-interval", type=float)
    ap.add_argument("--power-concurrency", type=int, default=64, help="the controller's power_concurrency")
    ap.add_argument("--wf-hosts", type=int)
    ap.add_argument("--wf-rounds", type=int)
    ap.add_argument("--players", type=int, default=16, help="installer-playing threads of the workflow part")
    ap.add_argument("--baseline-tree", type=Path, help="another checkout's single process, for the runner ratio")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    ap.add_argument("--tree", choices=("HEAD", "working"), default="HEAD",
                    help="measure the last commit (exported with git archive into a temp dir: other people's "
                         "half-done edits in the working tree cannot break the run) or the working tree as it is")
    args = ap.parse_args()
    if args.tree == "HEAD" and not os.environ.get("PROV_BENCH_SNAPSHOT"):
        return _rerun_from_snapshot()
    p = PRESETS["quick" if args.quick else "full"]
    for key in ("power_hosts", "power_interval", "wf_hosts", "wf_rounds"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if shutil.which("wrk") is None and "api" in parts:
        sys.exit("bench/scale's api part needs wrk (apt-get install wrk)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load0, t_start = os.getloadavg(), time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="prov-bench-scale-"))
    lines: list[str] = []
    try:
        with pg.running() as server:
            pid = postmaster_pid(server.datadir)
            if "api" in parts:
                print("# api ...", flush=True)
                res = api_part.run(work / "api", server, pid, hosts=args.hosts, rounds=p["api_rounds"],
                                   seconds=p["api_seconds"], page_seconds=p["page_seconds"],
                                   connections=args.connections, launcher=args.launcher)
                lines += _now([*api_part.report(res), ""])
            if "power" in parts:
                print("# power ...", flush=True)
                (work / "power").mkdir()
                res = power_part.run(work / "power", server, pid, hosts=p["power_hosts"],
                                     interval=p["power_interval"], concurrency=args.power_concurrency)
                lines += _now([*power_part.report(res), ""])
            if "workflow" in parts:
                print("# workflow ...", flush=True)
                res = workflow_part.run(work / "workflow", server, pid, hosts=p["wf_hosts"], rounds=p["wf_rounds"],
                                        timeout=600, players=args.players, baseline_tree=args.baseline_tree)
                lines += _now([*workflow_part.report(res), ""])
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    snapshot = os.environ.get("PROV_BENCH_SNAPSHOT")
    print(f"code measured: {'commit ' + snapshot if snapshot else 'the working tree'}")
    print(f"run {time.monotonic() - t_start:.0f} s on {os.cpu_count()} CPUs; load average (1/5/15 min) at the "
          f"start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, at the end "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
