"""The ramdisk's inspect and wipe modes, booted for real under TCG.

inspect: a guest with SMBIOS fields, two virtio disks of different sizes and
serials, a NIC on QEMU's user network (DHCP, and the receiver at 10.0.2.2)
and a second NIC on a bridge where Debian's lldpd runs in its own namespace
(provisioner/lab/lldp.py). The test's HTTP receiver refuses the first post
with 503 (the ramdisk retries with backoff) and stores the second; the
document is checked against the schema (provisioner/hardware.py when it is
there) and for the facts QEMU was given.

wipe: a raw disk with a GPT (sfdisk) and an ext4 signature in its first
partition, booted with prov.mode=wipe prov.wipe=metadata: afterwards sfdisk
and blkid find nothing on it, and the events endpoint got start/progress/done.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab import lldp
from provisioner.lab.ramdisk import Ramdisk

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 120  # ~15 s idle; 2 busy cores shared with CI
BOOT_MAC = "52:54:00:a1:00:01"
LLDP_MAC = "52:54:00:a1:00:02"
DISKS = {"vda": ("PROV-DISK-A1", 64), "vdb": ("PROV-DISK-B2", 96)}  # name -> (serial, MiB)
UUID = "6b1e7c2a-0d3f-4c55-9a61-2f0c8e9d4b17"
SMBIOS = {"manufacturer": "ProvLab Systems", "product": "PL-1000 \"quoted\"", "serial": "SN-H2-0001"}


class Receiver(ThreadingHTTPServer):
    """Stores JSON posts per path; refuses the first ``fail_first`` posts with 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.refused = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            if self.server.refused < self.server.fail_first:
                self.server.refused += 1
                self.send_response(503)
                self.end_headers()
                return
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {"unparsable": body.decode(errors="replace")}
            self.server.posts.append((self.path, doc))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    srv = Receiver(fail_first=1)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def lldp_bridge(tmp_path: Path) -> Iterator[tuple[str, lldp.LldpNeighbour]]:
    """A bridge with a tap for the guest and lldpd (own namespace) on a veth."""
    if os.geteuid() != 0 or lldp.lldpd_binary() is None or not shutil.which("ip"):
        pytest.skip("needs root, ip and lldpd (deploy/install.sh --dev)")
    tag = secrets.token_hex(3)
    bridge, tap = f"pinsb{tag}", f"pinst{tag}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        subprocess.run(["ip", "link", "set", tap, "master", bridge, "up"], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        neighbour = lldp.start(bridge, tmp_path / "lldpd", system_name="tor-sw-07", port_id="Ethernet1/7")
        try:
            yield tap, neighbour
        finally:
            neighbour.stop()
    finally:
        subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def _validate(doc: dict[str, Any]) -> None:
    """Against the control plane's pydantic model when it is there (provisioner/hardware.py)."""
    try:
        from provisioner import hardware  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    model = getattr(hardware, "Inventory", None) or getattr(hardware, "InventoryDocument", None)
    if model is not None:
        model.model_validate(doc)


def test_inspect_mode_posts_the_inventory(ramdisk: Ramdisk, boot_guest, tmp_path: Path, receiver: Receiver,
                                          lldp_bridge: tuple[str, lldp.LldpNeighbour]) -> None:
    tap, neighbour = lldp_bridge
    args = ["-kernel", str(ramdisk.vmlinux), "-initrd", str(ramdisk.initrd), "-smp", "2", "-uuid", UUID]
    url = f"http://10.0.2.2:{receiver.server_address[1]}/discovery/v1/inventory"
    args += ["-append", f"console=ttyS0 quiet prov.mode=inspect prov.inventory_url={url} prov.lldp_wait=10 "
                        f"prov.mac={BOOT_MAC}"]
    args += ["-smbios", "type=0,vendor=ProvBIOS,version=1.2.3,date=01/02/2026"]
    args += ["-smbios", "type=1," + ",".join(f"{k}={v.replace(',', ',,')}" for k, v in SMBIOS.items())]
    args += ["-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={BOOT_MAC},romfile="]
    args += ["-netdev", f"tap,id=n1,ifname={tap},script=no,downscript=no"]
    args += ["-device", f"virtio-net-pci,netdev=n1,mac={LLDP_MAC},romfile="]
    for i, (name, (serial, mib)) in enumerate(DISKS.items()):
        disk = tmp_path / f"{name}.raw"
        subprocess.run(["truncate", "-s", f"{mib}M", str(disk)], check=True)
        args += ["-drive", f"file={disk},if=none,id=d{i},format=raw",
                 "-device", f"virtio-blk-pci,drive=d{i},serial={serial}"]
    guest = boot_guest(args, name="inspect")
    guest.wait_for(r"PROV-RAMDISK: inventory (posted|failed)", BOOT_TIMEOUT)
    assert guest.wait_exit(30) == 0, "inspect mode powers off"
    out = guest.text()
    assert "PROV-RAMDISK: inventory posted" in out, guest.tail()
    assert "post attempt 1 failed (HTTP 503)" in out, "the 503 is retried"
    assert receiver.refused == 1 and len(receiver.posts) == 1
    path, doc = receiver.posts[0]
    assert path == "/discovery/v1/inventory"
    _validate(doc)
    print(f"inspect: posted after {guest.elapsed():.1f}s\n{json.dumps(doc, indent=1)[:3000]}")

    assert doc["schema_version"] == 1 and doc["boot_mac"] == BOOT_MAC
    system = doc["system"]
    assert (system["vendor"], system["product"], system["serial"]) == tuple(SMBIOS.values())
    assert (system["firmware_vendor"], system["firmware_version"], system["firmware_date"]) == (
        "ProvBIOS", "1.2.3", "01/02/2026")
    assert system["boot_mode"] == "bios" and system["uuid"] == UUID
    cpu = doc["cpu"]
    assert cpu["threads"] == 2 and cpu["arch"] == "x86_64" and cpu["flags"] and cpu["model"]
    assert isinstance(cpu["vmx"], bool) and cpu["svm"] == ("svm" in cpu["flags"])
    assert doc["memory"]["total_bytes"] >= 200 * 2**20
    assert doc["memory"]["dimms"] and doc["memory"]["dimms"][0]["size_bytes"] == 256 * 2**20
    disks = {d["name"]: d for d in doc["disks"]}
    assert set(disks) == set(DISKS)
    for name, (serial, mib) in DISKS.items():
        assert disks[name]["serial"] == serial and disks[name]["size_bytes"] == mib * 2**20
        assert disks[name]["by_path"].startswith("/dev/disk/by-path/virtio-pci-0000:00:")
    nics = {n["mac"]: n for n in doc["nics"]}
    assert set(nics) == {BOOT_MAC, LLDP_MAC}
    for nic in nics.values():
        assert nic["driver"] == "virtio_net" and nic["link"] is True
        assert nic["pci_address"].startswith("0000:00:")
    assert nics[BOOT_MAC]["lldp"] is None  # slirp sends no LLDP
    assert nics[LLDP_MAC]["lldp"] == {"chassis_id": neighbour.chassis_id, "port_id": "Ethernet1/7",
                                      "system_name": "tor-sw-07"}
    assert doc["bmc"] is None  # no IPMI device in this guest


def _partitioned_disk(path: Path) -> None:
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\n,32M,L\n,,L\n", text=True, check=True)
    # An ext4 signature inside the first partition (1 MiB in, sfdisk's default alignment).
    fs = path.with_suffix(".fs")
    subprocess.run(["truncate", "-s", "32M", str(fs)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    subprocess.run(["dd", f"if={fs}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc", "status=none"], check=True)
    fs.unlink()


def test_wipe_metadata_leaves_no_partition_table(ramdisk: Ramdisk, boot_guest, tmp_path: Path,
                                                receiver: Receiver) -> None:
    for tool in ("sfdisk", "blkid", "mkfs.ext4"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing")
    receiver.fail_first = 0
    disks = [tmp_path / "a.raw", tmp_path / "b.raw"]
    for d in disks:
        _partitioned_disk(d)
    assert "label: gpt" in subprocess.run(["sfdisk", "-d", str(disks[0])], capture_output=True, text=True).stdout
    assert "ext4" in subprocess.run(["blkid", "-p", "-O", str(1 << 20), str(disks[0])], capture_output=True,
                                    text=True).stdout
    url = f"http://10.0.2.2:{receiver.server_address[1]}/install/v1/tok-wipe/events"
    args = ["-kernel", str(ramdisk.vmlinux), "-initrd", str(ramdisk.initrd),
            "-append", f"console=ttyS0 quiet prov.mode=wipe prov.wipe=metadata prov.report_url={url}",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="]
    for i, d in enumerate(disks):
        args += ["-drive", f"file={d},if=none,id=d{i},format=raw", "-device", f"virtio-blk-pci,drive=d{i}"]
    guest = boot_guest(args, name="wipe")
    guest.wait_for(r"PROV-RAMDISK: wipe rc=\d+", BOOT_TIMEOUT)
    assert guest.wait_exit(30) == 0
    assert "PROV-RAMDISK: wipe rc=0" in guest.text(), guest.tail()
    events = [doc["event"] for path, doc in receiver.posts if path.endswith("/tok-wipe/events")]
    assert events == ["start", "progress", "progress", "done"], receiver.posts
    assert all(set(doc) <= {"event", "message", "progress"} for _, doc in receiver.posts)
    for d in disks:
        dump = subprocess.run(["sfdisk", "-d", str(d)], capture_output=True, text=True)
        assert dump.returncode != 0 and "label:" not in dump.stdout, dump.stdout
        for offset in (0, 1 << 20):  # the disk, and where the first partition's ext4 was
            probe = subprocess.run(["blkid", "-p", "-O", str(offset), str(d)], capture_output=True, text=True)
            assert probe.stdout == "", probe.stdout
    print(f"wipe: rc=0 after {guest.elapsed():.1f}s")
