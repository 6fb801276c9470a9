"""bench/abuse's tables: /healthz per phase, API responses by route, TFTP, installs, PASS/FAIL."""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections import Counter
from typing import Any

HEALTHZ_P99_MS = 100.0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def _table(rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                               strict=True))))


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}"


def healthz_table(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    phases = res["phases"]
    by: dict[str, list[float]] = {name: [] for name, _, _ in phases.marks}
    bad: Counter[str] = Counter()
    for t, ms, status in res["healthz"]:
        name = phases.of(t)
        if name is None:
            continue
        by[name].append(ms)
        if status != "200":
            bad[name] += 1
    stats = {name: {"n": len(v), "min": min(v, default=float("nan")), "p50": pct(v, 50), "p99": pct(v, 99),
                    "max": max(v, default=float("nan")), "bad": bad[name]} for name, v in by.items()}
    rows: list[tuple[Any, ...]] = [("/healthz (ms)", "polls", "min", "p50", "p99", "max", "non-200")]
    for name, s in stats.items():
        rows.append((name, s["n"], _ms(s["min"]), _ms(s["p50"]), _ms(s["p99"]), _ms(s["max"]), s["bad"]))
    idle = [ms for name, v in by.items() if name.startswith("idle") for ms in v]
    loud = by.get("abuse", [])
    if idle and loud:
        rows.append(("ratio abuse/idle", "", f"{min(loud) / min(idle):.1f}x", f"{pct(loud, 50) / pct(idle, 50):.1f}x",
                     f"{pct(loud, 99) / pct(idle, 99):.1f}x", f"{max(loud) / max(idle):.1f}x", ""))
    _table(rows)
    return stats


def api_table(api: dict[str, Any]) -> tuple[int, Counter[str]]:
    rows: list[tuple[Any, ...]] = [("API route (abuse phase)", "requests", "2xx", "4xx", "429", "5xx BMC", "5xx",
                                    "timeout", "conn err", "p50 ms", "p99 ms")]
    fivexx: Counter[str] = Counter()
    total_5xx = 0
    for route in sorted(api.get("status", {})):
        st: dict[str, int] = api["status"][route]
        lat = api["latency"].get(route, [])
        n = sum(st.values())
        two = sum(v for k, v in st.items() if k.startswith("2"))
        four = sum(v for k, v in st.items() if k.startswith("4") and k != "429")
        bmc = sum(v for k, v in st.items() if k.endswith("-bmc"))
        five = sum(v for k, v in st.items() if k.startswith("5") and not k.endswith("-bmc"))
        total_5xx += five
        for k, v in st.items():
            if k.startswith("5") and not k.endswith("-bmc"):
                codes = api.get("errors", {}).get(route, {})
                fivexx[f"{route} -> {k} ({', '.join(sorted(codes)) or '?'})"] += v
        rows.append((route, n, two, four, st.get("429", 0), bmc, five, st.get("timeout", 0), st.get("conn-error", 0),
                     _ms(pct(lat, 50)), _ms(pct(lat, 99))))
    _table(rows)
    four_codes = Counter({f"{r}: {c}": v for r, cs in api.get("errors", {}).items() for c, v in cs.items()})
    if four_codes:
        print("error codes:", ", ".join(f"{k} x{v}" for k, v in four_codes.most_common(12)))
    if api.get("abandoned"):
        print(f"requests abandoned at the end of the phase (still waiting, mostly on a BMC): {api['abandoned']}")
    if api.get("crashed"):
        print(f"client tasks that crashed: {api['crashed']}")
    return total_5xx, fivexx


def tftp_table(res: dict[str, Any]) -> dict[str, tuple[int, int]]:
    phases = res["phases"]
    rows: list[tuple[Any, ...]] = [("real TFTP client (curl, undionly.kpxe)", "ok/attempts", "median s", "max s",
                                    "failures")]
    out: dict[str, tuple[int, int]] = {}
    for name, _, _ in phases.marks:
        runs = [f for f in res["tftp"] if phases.of(f.t) == name]
        ok = [f.seconds for f in runs if f.ok]
        fails = Counter(f.detail for f in runs if not f.ok)
        out[name] = (len(ok), len(runs))
        rows.append((name, f"{len(ok)}/{len(runs)}", f"{statistics.median(ok):.2f}" if ok else "-",
                     f"{max(ok):.2f}" if ok else "-", "; ".join(f"{k} x{v}" for k, v in fails.items()) or "-"))
    _table(rows)
    flood = res["flood"]
    answers = ", ".join(f"{k} x{v}" for k, v in flood.answers.most_common(8)) or "none"
    print(f"TFTP flood: {flood.sent} RRQs from {flood.n} silent sockets, never acknowledged; "
          f"the server answered: {answers}")
    return out


def install_table(res: dict[str, Any]) -> tuple[int, int]:
    rows: list[tuple[Any, ...]] = [("install", "phase", "install-wait s", "booting s", "active s", "result")]
    for r in sorted(res["installs"], key=lambda r: (r.phase != "idle", r.host)):
        rows.append((r.host, r.phase, *(f"{r.marks[k]:.1f}" if k in r.marks else "-"
                                        for k in ("install-wait", "booting", "active")), "ok" if r.ok else r.error))
    _table(rows)
    print("(install-wait: after the install request; booting, active: after the installer's first request)")
    by = {p: [r.marks["active"] for r in res["installs"] if r.phase == p and r.ok] for p in ("idle", "abuse")}
    if by["idle"] and by["abuse"]:
        quiet, loud_s = statistics.median(by["idle"]), statistics.median(by["abuse"])
        print(f"installer start to active, median: idle {quiet:.1f} s, abuse {loud_s:.1f} s ({loud_s / quiet:.2f}x)")
    loud = [r for r in res["installs"] if r.phase == "abuse"]
    return sum(r.ok for r in loud), len(loud)


def report(args: argparse.Namespace, res: dict[str, Any], load_start: float) -> int:
    print(f"\nbench/abuse: {args.seconds:g} s of abuse between two {args.idle:g} s idle phases "
          f"(setup {res.get('setup_s', 0):.1f} s)")
    print(f"  {args.clients} API clients ({args.power_clients} on {args.dead} dead/slow BMCs, "
          f"{args.clients - args.power_clients} mixed 80 % reads / 20 % writes) + {args.anon} anonymous; "
          f"TFTP flood {args.flood} silent sockets ({args.flood_single} from one address) every "
          f"{args.flood_interval:g} s; {args.installs} installs per phase; power_call_timeout {args.bmc_timeout:g} s\n")
    hz = healthz_table(res)
    print()
    total_5xx, fivexx = api_table(res.get("api", {}))
    for k, v in fivexx.most_common():
        print(f"  5xx: {k} x{v}")
    print()
    tftp = tftp_table(res)
    print()
    inst_ok, inst_n = install_table(res)
    print(f"\ncontroller log: {res.get('log_lines', 0)} lines, {res.get('tracebacks', 0)} tracebacks")
    cpu = dict(res.get("cpu", {}))
    wall = cpu.pop("wall", float("nan"))
    if cpu:
        print(f"CPU in the abuse phase ({wall:.0f} s): " + ", ".join(
            f"{k} {v:.1f} s ({v / wall:.2f} cores)" for k, v in cpu.items()))
    loud_hz = hz.get("abuse", {})
    t_ok, t_n = tftp.get("abuse", (0, 0))
    all_t = [f for f in res["tftp"]]
    targets = [
        (f"/healthz p99 under abuse < {HEALTHZ_P99_MS:g} ms", f"{_ms(loud_hz.get('p99', float('nan')))} ms",
         loud_hz.get("p99", float("inf")) < HEALTHZ_P99_MS and loud_hz.get("bad", 1) == 0),
        ("0 x 5xx (BMC verdicts apart)", f"{total_5xx} x 5xx", total_5xx == 0 and bool(res.get("api"))),
        ("real TFTP client fetches undionly.kpxe under abuse", f"{t_ok}/{t_n}", t_n > 0 and t_ok == t_n),
        ("... and in every phase", f"{sum(f.ok for f in all_t)}/{len(all_t)}", all(f.ok for f in all_t)),
        ("installs in progress reach active under abuse", f"{inst_ok}/{inst_n}", inst_n > 0 and inst_ok == inst_n),
    ]
    print()
    _table([("target", "measured", "result"), *((t, m, "PASS" if ok else "FAIL") for t, m, ok in targets)])
    print(f"\nload average at the start: {load_start:.1f}, at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs (the load generators share them with the controller)")
    return 0 if all(ok for _, _, ok in targets) else 1
