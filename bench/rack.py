"""bench/rack: lab racks of N hosts through image-based install; t(N)/t(1) and where the time goes.

Each size gets a fresh lab (tests.support.labrig: private libvirtd, live
controller on loopback, TCG guests with ipmi_sim BMCs on a host-only bridge)
and one ``POST /racks/lab/provision`` with concurrency N. Phases come from
the hosts' history timestamps (tests.support.labrig.PHASES):

  power           installing -> install-wait: BMC power off, boot device, netboot on, power on (controller)
  netboot         install-wait -> agent fetched: DHCP, iPXE, ramdisk kernel + initrd over HTTP, ramdisk boot
  image           agent fetched -> booting: stream + write + read-back sha256 + NoCloud seed (in the guest)
  first-boot+ssh  booting -> SSH up: reboot, local boot, Debian + cloud-init, sshd (in the guest)
  ansible         configuring -> active (with --configure)

"controller" = the power phase minus the BMCs' share of it (every power and
boot-device history line carries "(BMC x s)": the calls, retries and
confirmation polls). The lab's BMCs are ipmi_sim processes whose chassis
program drives libvirt (a boot-order define, a QEMU start) on this same
machine, so the BMC share grows with N here; the controller's share should not.
Everything else runs inside emulated guests that share this machine's cores.

    .venv/bin/python bench/rack.py [--sizes 1,4,8] [--configure] [--memory 768] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from tests.support.labrig import host_events, lab_rig, phase_breakdown

PHASE_NAMES = ("power", "power.bmc", "power.controller", "netboot", "image", "first-boot+ssh", "ansible")
REDUCED_VARS = {"hardening_auto_updates": False, "hardening_auditd": False, "hardening_remove_packages": False,
                "hardening_disable_services": False}


def run_size(n: int, *, configure: bool, memory: int, timeout: float) -> dict[str, Any]:
    ctl = {"deploy_wait_timeout": timeout, "install_wait_timeout": timeout, "ssh_wait_timeout": timeout,
           "configure_timeout": timeout}
    with lab_rig(n, memory_mib=memory, controller=ctl, ansible_vars=REDUCED_VARS) as rig:
        t0 = time.monotonic()
        with rig.ctl.client() as c:
            task = c.post("/api/v1/racks/lab/provision", json={"concurrency": n, "configure": configure})
            while True:
                t = c.get(f"/api/v1/tasks/{task['id']}")
                if t["status"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() - t0 > timeout:
                    break
                time.sleep(2)
        wall = time.monotonic() - t0
        with rig.ctl.client() as c:
            states = {h: c.get(f"/api/v1/hosts/{h}")["state"] for h in rig.lab.state.data["hosts"]}
        phases = {h: phase_breakdown(host_events(rig, h)) for h in states}
    per_phase = {}
    for p in PHASE_NAMES:
        vals = [ph[p] for ph in phases.values() if p in ph]
        if vals:
            per_phase[p] = {"mean": round(statistics.mean(vals), 2), "max": round(max(vals), 2)}
    ok = sum(1 for s in states.values() if s == "active")
    return {"hosts": n, "wall_s": round(wall, 1), "lab_up_s": round(rig.up_seconds, 1), "active": ok,
            "task": t["status"], "phases": per_phase, "per_host": phases}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,8")
    ap.add_argument("--configure", action="store_true", help="run the (reduced) configuration playbooks too")
    ap.add_argument("--memory", type=int, default=768, help="MiB per guest")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        res = run_size(n, configure=args.configure, memory=args.memory, timeout=args.timeout)
        results.append(res)
        print(f"# {n} host(s): {res['wall_s']} s, {res['active']}/{n} active, phases {res['phases']}",
              file=sys.stderr, flush=True)
    base = results[0]
    for r in results:
        r["ratio"] = round(r["wall_s"] / base["wall_s"], 2)
        for key, name in (("power", "power_ratio"), ("power.controller", "controller_ratio")):
            bp, rp = base["phases"].get(key, {}).get("mean"), r["phases"].get(key, {}).get("mean")
            r[name] = round(rp / bp, 2) if bp and rp else None
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"image-based install, configure={'on' if args.configure else 'off'}, TCG guests, "
              f"{args.memory} MiB each; phase = mean (max) seconds per host")
        head = f"{'N':>3}{'wall s':>9}{'t(N)/t(1)':>11}{'ctl ratio':>11}{'active':>8}  " + \
            "  ".join(f"{p:>16}" for p in PHASE_NAMES)
        print(head)
        for r in results:
            cells = "  ".join(f"{_cell(r['phases'].get(p)):>16}" for p in PHASE_NAMES)
            print(f"{r['hosts']:>3}{r['wall_s']:>9.1f}{r['ratio']:>11.2f}{_num(r['controller_ratio']):>11}"
                  f"{r['active']:>5}/{r['hosts']:<2}  {cells}")
    return 0 if all(r["active"] == r["hosts"] for r in results) else 1


def _cell(p: dict[str, float] | None) -> str:
    return f"{p['mean']:.1f} ({p['max']:.1f})" if p else "-"


def _num(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
