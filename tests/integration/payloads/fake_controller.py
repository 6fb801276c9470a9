"""A stand-in for the controller's side of an image deploy, for the payload tests.

It serves the rendered agent and the image, and records the agent's events
after checking them against the install API's schema (``EventBody``: event,
message, progress; nothing else). The real callback route has its own tests;
the peer under test here is the ramdisk + agent in a real VM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from provisioner.lab.images import DiskImage
from provisioner.lab.ramdisk import Ramdisk
from provisioner.render import render
from tests.integration.payloads.qemu import Guest, start_guest

TOKEN = "tok-deploy-0123456789"
MAC = "52:54:00:12:34:56"
ADMIN = "prov"
EVENT_KEYS = {"event", "message", "progress"}


@dataclass
class Controller:
    """What the fake controller saw."""

    files: dict[str, Path | bytes]
    events: list[dict[str, Any]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)
    bad_requests: list[str] = field(default_factory=list)


def _handler(ctl: Controller) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            ctl.gets.append(self.path)
            body = ctl.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Content-Length", str(body.stat().st_size))
            self.end_headers()
            with body.open("rb") as fh:
                shutil.copyfileobj(fh, self.wfile, 1024 * 1024)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                ev = json.loads(raw)
                ok = (
                    self.path == f"/install/v1/{TOKEN}/events"
                    and self.headers.get("Content-Type") == "application/json"
                    and set(ev) <= EVENT_KEYS
                    and ev.get("event") in ("start", "progress", "done", "error")
                    and isinstance(ev.get("message", ""), str)
                    and (ev.get("progress") is None or 0 <= ev["progress"] <= 100)
                )
            except ValueError:
                ok = False
            if not ok:
                ctl.bad_requests.append(f"{self.path} {raw!r}")
                self.send_error(422)
                return
            ctl.events.append(ev)
            body = json.dumps({"ok": True, "host": "test-host", "state": "installing"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(image: DiskImage, image_file: Path | None = None) -> Iterator[tuple[Controller, str]]:
    """Serve ``image`` (or ``image_file``, e.g. its .gz) at /images/disk; yields (controller, guest base URL)."""
    ctl = Controller(files={"/images/disk": image_file or image.path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ctl))
    # QEMU's user network (slirp) forwards the guest's 10.0.2.2 to this machine's loopback.
    base = f"http://10.0.2.2:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ctl, base
    finally:
        server.shutdown()
        server.server_close()


def agent_context(base: str, image: DiskImage, hostname: str, pubkey: str, **deploy: str) -> dict[str, Any]:
    """The context the controller renders templates/deploy/agent.sh.j2 with (boot context + image + deploy)."""
    return {
        "base_url": base,
        "token": TOKEN,
        "nic": {"mac": MAC, "name": "eth0"},
        "urls": {"events": f"{base}/install/v1/{TOKEN}/events"},
        "host": {"name": hostname, "hostname": hostname, "fqdn": f"{hostname}.lab.test"},
        "profile": {"name": "image-test"},
        "install": {"admin_user": ADMIN, "ssh_authorized_keys": [pubkey], "disk": "/dev/vda", "proxy": ""},
        "image": image.agent_context(f"{base}/images/disk"),
        "deploy": {"instance_id": f"prov-{hostname}-1", "after": "poweroff", "on_error": "poweroff", **deploy},
    }


def run_deploy(
    ramdisk: Ramdisk, ctl: Controller, base: str, ctx: dict[str, Any], disk: Path, work: Path, timeout: float = 600
) -> Guest:
    """Boot the ramdisk with prov.run=/agent.sh against ``disk`` and wait until it powers off."""
    ctl.files["/agent.sh"] = render("deploy/agent.sh.j2", ctx).encode()
    cmdline = f"console=ttyS0 quiet prov.url={base} prov.token={TOKEN} prov.run=/agent.sh prov.poweroff=1"
    args = [
        "-kernel", str(ramdisk.vmlinux), "-initrd", str(ramdisk.initrd), "-append", cmdline,
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
        # cache=unsafe: the host's page cache may keep the writes (the test owns the file).
        "-drive", f"file={disk},format=raw,if=none,id=d0,cache=unsafe",
        "-device", "virtio-blk-pci,drive=d0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    guest = start_guest(args, work / "ramdisk-console.log", memory="512")
    try:
        guest.wait_for(r"PROV-RAMDISK: done", timeout)
        guest.wait_exit(60)
    finally:
        guest.stop()
    return guest


def partition_file(disk: Path, work: Path) -> Path:
    """Partition 1 as its own file (debugfs has no offset option)."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=True).stdout)
    part = table["partitiontable"]["partitions"][0]
    out = work / "p1.img"
    subprocess.run(
        ["dd", f"if={disk}", f"of={out}", "bs=512", f"skip={part['start']}", f"count={part['size']}", "status=none"],
        check=True,
    )
    return out


def debugfs_cat(fs_image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(fs_image)], capture_output=True, text=True).stdout
