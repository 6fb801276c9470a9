"""bench/virt: guest lifecycle latency of prov's libvirt driver vs libvirt's own tools, same run, same spec.

A private libvirtd (provisioner.lab.libvirtd: own network and mount namespace) runs
the guests under TCG. The spec: direct kernel boot of prov's test ramdisk, 128 MiB,
1 vCPU, a 0.1 GiB virtio qcow2 disk, a virtio NIC with a fixed MAC on a NAT network,
virtio-rng, virtio balloon, serial console logged to a file.

Phases (median of --reps runs; the reference is run in alternation with prov):
  create   volume + define + start          prov create_guest   vs  virt-install --import
  define   volume + define                  prov create_guest(start=False)  vs  virt-install --print-xml + virsh define
  start                                     prov start          vs  virsh start
  destroy                                   prov destroy        vs  virsh destroy
  undefine undefine + delete volumes + release the reservation
                                            prov delete_guest   vs  virsh undefine --remove-all-storage + net-update
           (a DHCP host update makes libvirt 9 restart dnsmasq, ~0.5 s; "undefine, reservation kept"
           is the same without it: delete_guest(release=False) vs virsh undefine --remove-all-storage)
  first-line  create until the first console line is in the log, for 1 and 4 guests; ", reserved":
              the fixed MACs' reservations exist already (kept from an earlier life), so prov makes
              no network update (the reference never makes one)

prov's side opens a fresh libvirt connection per operation (as a CLI would). Both sides do
the same work: the reference also reserves the fixed MAC (``virsh net-update add-last
ip-dhcp-host``) before virt-install, and releases it after ``virsh undefine``. Ratio =
prov / reference; target <= 1.0.

    .venv/bin/python bench/virt.py [--reps 3] [--first-line-reps 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner.drivers.virt.libvirt import open_connection
from provisioner.drivers.virt.spec import GuestSpec, NetworkSpec
from provisioner.lab.libvirtd import LibvirtdHandle, start_libvirtd, stop_libvirtd
from provisioner.lab.ramdisk import Ramdisk, ensure_ramdisk

POOL, NET, SUBNET = "bench", "bench-nat", "10.232.0.0/24"
MEMORY_MIB, DISK_GIB = 128, 0.1
CMDLINE = "console=ttyS0 panic=-1"


class Bench:
    def __init__(self, lv: LibvirtdHandle, rd: Ramdisk) -> None:
        self.lv, self.rd = lv, rd
        self.n = 0
        with open_connection(lv.uri) as conn:
            self.report = conn.preflight()

    # ------------------------------------------------------------------ helpers
    def _mac(self) -> str:
        self.n += 1
        return f"52:54:00:be:{self.n // 256:02x}:{self.n % 256:02x}"

    def log(self, name: str) -> Path:
        return self.lv.console_dir / f"{name}-serial.log"

    def conn(self):  # type: ignore[no-untyped-def]
        return open_connection(self.lv.uri, console_dir=str(self.lv.console_dir), default_pool=POOL,
                               default_network=NET)

    def spec(self, name: str, mac: str) -> GuestSpec:
        return GuestSpec.parse({
            "name": name, "memory_mib": MEMORY_MIB, "vcpus": 1, "virt_type": "qemu", "cpu_mode": "maximum",
            "disks": [{"size_gib": DISK_GIB, "pool": POOL}], "nics": [{"network": NET, "mac": mac}],
            "direct_boot": {"kernel": str(self.rd.vmlinux), "initrd": str(self.rd.initrd), "cmdline": CMDLINE},
        })

    def vi_args(self, name: str, mac: str, *extra: str) -> list[str]:
        return [
            "virt-install", "--connect", self.lv.uri, "--name", name, "--memory", str(MEMORY_MIB), "--vcpus", "1",
            "--virt-type", "qemu", "--machine", "q35", "--cpu", "mode=maximum", "--osinfo", "detect=on,require=off",
            "--import", "--noautoconsole", "--graphics", "none", "--video", "none", "--sound", "none",
            "--controller", "usb,model=none", "--input", "none", "--channel", "none",
            "--disk", f"pool={POOL},size={DISK_GIB},format=qcow2,bus=virtio",
            "--network", f"network={NET},mac={mac},model=virtio",
            "--rng", "/dev/urandom", "--memballoon", "virtio",
            "--serial", f"pty,log.file={self.log(name)}", "--console", "none",
            "--boot", f"kernel={self.rd.vmlinux},initrd={self.rd.initrd},kernel_args={CMDLINE}",
            *extra,
        ]

    def host_xml(self, name: str, mac: str) -> str:
        # the same entry prov writes (libvirt's <host> element of <dhcp>), at the next free address
        with self.conn() as c:
            ip = c._free_ip(c.network_info(NET), set())
        return f"<host mac='{mac}' name='{name}' ip='{ip}'/>"

    def ref_reserve(self, name: str, mac: str) -> None:
        self.virsh("net-update", NET, "add-last", "ip-dhcp-host", self.host_xml(name, mac), "--live", "--config")

    def ref_release(self, name: str, mac: str) -> None:
        xml = next(f"<host mac='{h['mac']}' name='{h['name']}' ip='{h['ip']}'/>"
                   for h in self._hosts() if h["mac"] == mac)
        self.virsh("net-update", NET, "delete", "ip-dhcp-host", xml, "--live", "--config")

    def _hosts(self) -> list[dict[str, str]]:
        with self.conn() as c:
            return c.network_info(NET).hosts

    def virsh(self, *args: str) -> None:
        proc = subprocess.run(["virsh", "-q", "-c", self.lv.uri, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")

    @staticmethod
    def timed(fn: Callable[[], Any]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def wait_first_line(self, name: str, t0: float, timeout: float = 120) -> float:
        path = self.log(name)
        while time.perf_counter() - t0 < timeout:
            try:
                if b"\n" in path.read_bytes():
                    return time.perf_counter() - t0
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{name}: no console line within {timeout}s")

    # ------------------------------------------------------------------ one lifecycle each
    def prov_cycle(self) -> dict[str, float]:
        name, mac = f"p{self.n}", self._mac()
        out: dict[str, float] = {}

        def define() -> None:
            with self.conn() as c:
                c.create_guest(self.spec(name, mac), self.report, start=False)

        def start() -> None:
            with self.conn() as c:
                c.start(name)

        def destroy() -> None:
            with self.conn() as c:
                c.destroy(name)

        def undefine() -> None:
            with self.conn() as c:
                c.delete_guest(name)

        out["define"] = self.timed(define)
        out["start"] = self.timed(start)
        out["destroy"] = self.timed(destroy)
        out["undefine"] = self.timed(undefine)
        name, mac = f"p{self.n}", self._mac()

        def create() -> None:
            with self.conn() as c:
                c.create_guest(self.spec(name, mac), self.report)

        out["create"] = self.timed(create)
        with self.conn() as c:
            c.destroy(name)

        def undefine_keep() -> None:
            with self.conn() as c:
                c.delete_guest(name, release=False)

        out["undefine, reservation kept"] = self.timed(undefine_keep)
        return out

    def ref_cycle(self, tmp: Path) -> dict[str, float]:
        name, mac = f"r{self.n}", self._mac()
        out: dict[str, float] = {}
        xml = tmp / f"{name}.xml"

        def define() -> None:
            # the same work as prov: reserve the fixed MAC, make the volume, define.
            # --print-xml still creates the disk volume; virsh defines the printed XML
            self.ref_reserve(name, mac)
            proc = subprocess.run(self.vi_args(name, mac, "--print-xml"), check=True, capture_output=True, text=True)
            xml.write_text(proc.stdout)
            self.virsh("define", str(xml))

        def undefine() -> None:
            self.virsh("undefine", name, "--remove-all-storage")
            self.ref_release(name, mac)

        out["define"] = self.timed(define)
        out["start"] = self.timed(lambda: self.virsh("start", name))
        out["destroy"] = self.timed(lambda: self.virsh("destroy", name))
        out["undefine"] = self.timed(undefine)
        name, mac = f"r{self.n}", self._mac()

        def create() -> None:
            self.ref_reserve(name, mac)
            subprocess.run(self.vi_args(name, mac), check=True, capture_output=True)

        out["create"] = self.timed(create)
        self.virsh("destroy", name)
        out["undefine, reservation kept"] = self.timed(lambda: self.virsh("undefine", name, "--remove-all-storage"))
        return out

    # ------------------------------------------------------------------ create -> first console line
    def first_lines(self, count: int, ours: bool, *, reserved: bool = False) -> float:
        """Create ``count`` guests, return the time until the last one's first console line.

        ``reserved``: the guests' fixed MACs already have their DHCP reservations (kept from an
        earlier life), so prov makes no network update.
        """
        if reserved:
            names = [f"{'p' if ours else 'r'}k{i}" for i in range(count)]
            macs = [f"52:54:00:bf:{0 if ours else 1:02x}:{i:02x}" for i in range(count)]
        else:
            names = [f"{'p' if ours else 'r'}f{self.n}-{i}" for i in range(count)]
            macs = [self._mac() for _ in names]
        if reserved and ours:
            with self.conn() as c:
                have = {h["mac"] for h in c.network_info(NET).hosts}
                for i, (name, mac) in enumerate(zip(names, macs, strict=True)):
                    if mac not in have:
                        c.reserve(NET, mac, name, f"10.232.0.{100 + i}")
        t0 = time.perf_counter()
        if ours:
            with self.conn() as c:
                for name, mac in zip(names, macs, strict=True):
                    c.create_guest(self.spec(name, mac), self.report)
        else:
            for name, mac in zip(names, macs, strict=True):
                if not reserved:
                    self.ref_reserve(name, mac)
                subprocess.run(self.vi_args(name, mac), check=True, capture_output=True)
        results: list[float] = []
        threads = [threading.Thread(target=lambda n=n: results.append(self.wait_first_line(n, t0))) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(results) != count:
            raise RuntimeError("a guest printed no console line")
        with self.conn() as c:
            for name in names:
                # also removes virt-install's volumes (they are pool volumes) and the reservations
                c.delete_guest(name, release=not reserved)
        return max(results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--first-line-reps", type=int, default=1, help="each boots 1 or 4 guests per side")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # a SIGTERM (timeout, CI cancel) must still stop the private libvirtd and its namespace
    signal.signal(signal.SIGTERM, lambda _sig, _frm: sys.exit(143))
    for tool in ("virt-install", "virsh", "libvirtd"):
        if shutil.which(tool) is None:
            print(f"{tool} not installed", file=sys.stderr)
            return 2
    rd = ensure_ramdisk()
    base = Path(tempfile.mkdtemp(prefix="prov-bv-"))
    lv = start_libvirtd(base)
    try:
        with open_connection(lv.uri) as conn:
            conn.ensure_dir_pool(POOL, str(lv.pool_dir))
            conn.ensure_network(NetworkSpec(NET, subnet=SUBNET))
        b = Bench(lv, rd)
        ours: dict[str, list[float]] = {}
        ref: dict[str, list[float]] = {}
        b.prov_cycle()  # warm-up: QEMU binary and kernel in the page cache
        b.ref_cycle(base)
        for _ in range(args.reps):
            for k, v in b.prov_cycle().items():
                ours.setdefault(k, []).append(v)
            for k, v in b.ref_cycle(base).items():
                ref.setdefault(k, []).append(v)
        for count in (1, 4):
            for reserved in (False, True):
                key = f"first-line x{count}" + (", reserved" if reserved else "")
                for _ in range(args.first_line_reps):
                    ours.setdefault(key, []).append(b.first_lines(count, ours=True, reserved=reserved))
                    ref.setdefault(key, []).append(b.first_lines(count, ours=False, reserved=reserved))
        rows = []
        for k in ("define", "start", "destroy", "undefine", "undefine, reservation kept", "create", "first-line x1",
                  "first-line x1, reserved", "first-line x4", "first-line x4, reserved"):
            o, r = statistics.median(ours[k]), statistics.median(ref[k])
            rows.append({"phase": k, "prov_s": round(o, 3), "reference_s": round(r, 3), "ratio": round(o / r, 2)})
        result = {"verdict": b.report.overall, "reps": args.reps, "rows": rows,
                  "reference": "virt-install 4.1 / virsh (libvirt 9.0)"}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"host verdict: {result['verdict']} (guests under TCG); median of {args.reps}")
            print(f"{'phase':<28}{'prov s':>9}{'ref s':>9}{'ratio':>8}")
            for row in rows:
                print(f"{row['phase']:<28}{row['prov_s']:>9.3f}{row['reference_s']:>9.3f}{row['ratio']:>8.2f}")
        return 0 if all(r["ratio"] <= 1.0 for r in rows) else 1
    finally:
        stop_libvirtd(lv)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
