"""bench/tftp: prov's TFTP server vs tftpd-hpa (in.tftpd) vs dnsmasq's TFTP, same clients, same file.

    .venv/bin/python bench/tftp.py [--size-mib 32] [--runs 3] [--parallel 64]

A 32 MiB file is fetched on loopback by atftp and curl at blksize 512 and 1468
(and with windowsize 16 via atftp, which only prov implements; the others
ignore the option and fall back to lock-step), then 64 clients at once. Every
figure is printed with its ratio against tftpd-hpa (>1.0 = faster). Each
server runs in its own process; all are started and stopped by the bench.
dnsmasq can only listen on port 69; it is skipped if that port is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOST = "127.0.0.1"

PROV_SERVER = """
import logging, signal, sys, threading
from pathlib import Path
from provisioner.drivers.boot.tftp import TftpConfig, TftpServer
logging.basicConfig(level=logging.WARNING)
# every client of the bench comes from 127.0.0.1: lift the per-address cap (8 by default)
srv = TftpServer(TftpConfig(root=Path(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]),
                            max_per_client=512, reuse_port=sys.argv[3] == "1")).start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("ready", flush=True)
stop.wait()
srv.stop()
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def server(kind: str, root: Path, workdir: Path, workers: int = 1) -> Iterator[int | None]:
    extra: list[subprocess.Popen[bytes]] = []
    if kind == "prov":
        port = free_udp_port()
        # --prov-workers N: N processes on one port with SO_REUSEPORT (issue 14)
        procs = [subprocess.Popen([sys.executable, "-c", PROV_SERVER, str(root), str(port),
                                   "1" if workers > 1 else "0"], stdout=subprocess.PIPE) for _ in range(workers)]
        for p in procs:
            assert p.stdout is not None
            p.stdout.readline()
        proc, extra = procs[0], procs[1:]
    elif kind == "tftpd-hpa":
        if not shutil.which("in.tftpd"):
            yield None
            return
        port = free_udp_port()
        # -L: foreground; -s: chroot-style root; (no -c: read-only)
        proc = subprocess.Popen(["in.tftpd", "-L", "-s", str(root), "-a", f"{HOST}:{port}"])
    elif kind == "dnsmasq":
        if not shutil.which("dnsmasq") or not port_free(69):
            yield None
            return
        port = 69
        proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--enable-tftp",
                                 f"--tftp-root={root}", f"--listen-address={HOST}", "--bind-interfaces",
                                 "--user=root", "--pid-file=", "--log-facility=-",
                                 "--edns-packet-max=65535"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        raise ValueError(kind)
    time.sleep(0.3)
    try:
        yield port
    finally:
        for p in (proc, *extra):
            p.terminate()
        for p in (proc, *extra):
            p.wait(10)


def fetch(client: str, port: int, name: str, out: Path, blksize: int, window: int = 1) -> float:
    if client == "atftp":
        cmd = ["atftp", "-g", "-r", name, "-l", str(out), "--option", f"blksize {blksize}"]
        if window > 1:
            cmd += ["--option", f"windowsize {window}"]
        cmd += [HOST, str(port)]
    else:
        cmd = ["curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(out), f"tftp://{HOST}:{port}/{name}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.decode(errors='replace')[-300:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--parallel-runs", type=int, default=1, help="repeat the parallel case (min/median/max)")
    ap.add_argument("--only-parallel", action="store_true", help="skip the single-client cases")
    ap.add_argument("--prov-workers", type=int, default=1, help="prov server processes (SO_REUSEPORT)")
    args = ap.parse_args()
    for binary in ("atftp", "curl"):
        if not shutil.which(binary):
            print(f"missing client {binary}", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="prov-bench-tftp-"))
    try:
        root = work / "root"
        root.mkdir()
        size = args.size_mib * 1024 * 1024
        (root / "big.bin").write_bytes(os.urandom(size))
        want = (root / "big.bin").read_bytes()
        servers = ["prov", "tftpd-hpa", "dnsmasq"]
        cases = [("atftp", 512, 1), ("atftp", 1468, 1), ("curl", 512, 1), ("curl", 1468, 1), ("atftp", 1468, 16)]
        results: dict[tuple[str, str, int, int], float] = {}
        par: dict[str, float] = {}
        par_all: dict[str, list[float]] = {}
        if args.only_parallel:
            cases = []
        for srv in servers:
            with server(srv, root, work, args.prov_workers) as port:
                if port is None:
                    print(f"# {srv}: not available, skipped")
                    continue
                for client, blk, win in cases:
                    times = []
                    try:
                        for i in range(args.runs):
                            out = work / f"out-{srv}-{client}-{i}"
                            times.append(fetch(client, port, "big.bin", out, blk, win))
                            if out.read_bytes() != want:
                                raise RuntimeError(f"{srv}/{client}: corrupt download")
                            out.unlink()
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        print(f"# {srv} {client} blksize {blk}: FAILED: {str(exc)[:200]}")
                        continue
                    results[(srv, client, blk, win)] = statistics.median(times)
                # N clients at once (half atftp, half curl), blksize 1468
                def one(i: int, port: int = port, srv: str = srv) -> None:
                    out = work / f"par-{srv}-{i}"
                    fetch("curl" if i % 2 else "atftp", port, "big.bin", out, 1468)
                    if out.stat().st_size != size:
                        raise RuntimeError(f"{srv}: parallel download {i} short")
                    out.unlink()

                try:
                    for _run in range(args.parallel_runs):
                        t0 = time.perf_counter()
                        with ThreadPoolExecutor(args.parallel) as pool:
                            list(pool.map(one, range(args.parallel)))
                        par_all.setdefault(srv, []).append(time.perf_counter() - t0)
                    par[srv] = statistics.median(par_all[srv])
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"# {srv}: {args.parallel} parallel clients FAILED: {str(exc)[:200]}")

        mib = size / 1e6
        print(f"\nTFTP, {args.size_mib} MiB file on loopback, median of {args.runs} runs (MB/s; ratio vs tftpd-hpa)")
        print(f"{'client':7} {'blksize':>7} {'window':>6} | " + " | ".join(f"{s:>20}" for s in servers))
        for client, blk, win in cases:
            base = results.get(("tftpd-hpa", client, blk, win))
            cells = []
            for srv in servers:
                t = results.get((srv, client, blk, win))
                if t is None:
                    cells.append(f"{'-':>20}")
                    continue
                ratio = f"{base / t:.2f}x" if base else "n/a"
                cells.append(f"{mib / t:8.1f} MB/s {ratio:>7}")
            print(f"{client:7} {blk:>7} {win:>6} | " + " | ".join(cells))
        base = par.get("tftpd-hpa")
        cells = []
        for srv in servers:
            t = par.get(srv)
            if t is None:
                cells.append(f"{'-':>20}")
                continue
            ratio = f"{base / t:.2f}x" if base else "n/a"
            cells.append(f"{args.parallel * mib / t:8.1f} MB/s {ratio:>7}")
        print(f"{'x' + str(args.parallel):7} {1468:>7} {1:>6} | " + " | ".join(cells) + "   (aggregate, wall time)")
        hpa = par_all.get("tftpd-hpa")
        for srv, times in par_all.items():
            agg = sorted(args.parallel * mib / t for t in times)
            ratio = ""
            if hpa and srv != "tftpd-hpa":  # ratios of the runs paired in order, min/median/max
                rs = sorted(h / t for h, t in zip(hpa, times, strict=False))
                ratio = f"; ratio vs tftpd-hpa min/median/max {rs[0]:.2f}/{statistics.median(rs):.2f}/{rs[-1]:.2f}x"
            print(f"x{args.parallel} {srv} (workers {args.prov_workers if srv == 'prov' else '-'}): MB/s "
                  f"min/median/max {agg[0]:.1f}/{statistics.median(agg):.1f}/{agg[-1]:.1f}{ratio}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
