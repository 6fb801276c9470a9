"""bench/http-boot: kernel + initrd over prov's HTTP (/boot/files) vs over prov's TFTP, same files.

    .venv/bin/python bench/http_boot.py [--runs 3] [--synthetic]

The files are the test ramdisk (``ensure_ramdisk()``: Debian kernel + busybox
initramfs) copied into a temporary boot root, or, with ``--synthetic`` or when
the ramdisk cannot be built, random files of the same order of size. Both
servers run as ``prov serve`` would run them (uvicorn with create_app; our
TftpServer), on loopback, in separate processes. Clients: curl for both
(HTTP and ``tftp://`` with blksize 1468), plus atftp with windowsize 16 (the
best TFTP can do). Prints seconds and MB/s per method and the HTTP/TFTP ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"

API = """
import sys, uvicorn
from pathlib import Path
from provisioner.settings import Settings
from provisioner.api.app import create_app
s = Settings(data_dir=Path(sys.argv[1]), boot_root=Path(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]))
app = create_app(s)
app.state.start_services = False  # only the HTTP side; TFTP runs in its own process below
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
"""

TFTP = """
import signal, sys, threading
from pathlib import Path
from provisioner.drivers.boot.tftp import TftpConfig, TftpServer
srv = TftpServer(TftpConfig(root=Path(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]))).start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("ready", flush=True)
stop.wait()
srv.stop()
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.decode(errors='replace')[-300:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prov-bench-http-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        root = work / "boot"
        root.mkdir()
        source = "synthetic"
        if not args.synthetic:
            try:
                from provisioner.lab.ramdisk import ensure_ramdisk

                rd = ensure_ramdisk()
                shutil.copyfile(rd.kernel, root / "vmlinuz")
                shutil.copyfile(rd.initrd, root / "initrd.img")
                source = f"test ramdisk {rd.key}"
            except Exception as exc:
                print(f"# ramdisk unavailable ({exc}); using synthetic files")
        if not (root / "vmlinuz").exists():
            (root / "vmlinuz").write_bytes(os.urandom(8 * 1024 * 1024))
            (root / "initrd.img").write_bytes(os.urandom(24 * 1024 * 1024))
        files = ["vmlinuz", "initrd.img"]
        total = sum((root / f).stat().st_size for f in files)

        http_port = free_port(socket.SOCK_STREAM)
        tftp_port = free_port(socket.SOCK_DGRAM)
        procs.append(subprocess.Popen([sys.executable, "-c", API, str(work / "data"), str(root), str(http_port)]))
        tftp = subprocess.Popen([sys.executable, "-c", TFTP, str(root), str(tftp_port)], stdout=subprocess.PIPE)
        procs.append(tftp)
        assert tftp.stdout is not None
        tftp.stdout.readline()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((HOST, http_port)) == 0:
                    break
            time.sleep(0.2)

        out = work / "out"
        methods = {
            "HTTP (curl)": lambda f: ["curl", "-sSf", "-o", str(out), f"http://{HOST}:{http_port}/boot/files/{f}"],
            "TFTP blksize 1468 (curl)": lambda f: ["curl", "-sS", "--tftp-blksize", "1468", "-o", str(out),
                                                   f"tftp://{HOST}:{tftp_port}/{f}"],
            "TFTP blksize 1468 windowsize 16 (atftp)": lambda f: ["atftp", "-g", "-r", f, "-l", str(out),
                                                                  "--option", "blksize 1468",
                                                                  "--option", "windowsize 16", HOST, str(tftp_port)],
        }
        results: dict[str, float] = {}
        for name, make in methods.items():
            runs = []
            for _ in range(args.runs):
                t = 0.0
                for f in files:
                    t += timed(make(f))
                    if out.read_bytes() != (root / f).read_bytes():
                        raise RuntimeError(f"{name}: {f} corrupt")
                runs.append(t)
            results[name] = statistics.median(runs)
        print(f"\nkernel + initrd ({source}; {total / 1e6:.1f} MB), median of {args.runs} runs, loopback")
        http = results["HTTP (curl)"]
        for name, t in results.items():
            print(f"{name:42} {t:7.3f} s {total / t / 1e6:8.1f} MB/s   time / HTTP time: {t / http:5.2f}")
        return 0
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
