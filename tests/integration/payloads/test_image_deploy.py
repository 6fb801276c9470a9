"""Image-based deploy: the ramdisk runs the rendered agent in a TCG guest (fast, small image).

The image here is a small synthetic disk (MBR + one ext4 partition with an
os-release and 4 MiB of random data) so the whole agent path (stream, write,
read-back sha256, partition re-read, seed injection, events, power off) runs in
seconds even under TCG. The lab's real Debian image goes through the same agent
in test_lab_image.py (slow, opt-in).
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from provisioner.drivers.deploy.images import file_sha256
from provisioner.lab.images import DiskImage
from provisioner.lab.ramdisk import Ramdisk
from tests.integration.payloads.fake_controller import (
    MAC,
    agent_context,
    debugfs_cat,
    partition_file,
    run_deploy,
    serve,
)
from tests.support.helpers import require_binary

pytestmark = pytest.mark.integration

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1c3lib3gtZGVwbG95LXRlc3Qta2V5LTAwMDAwMDAw test@prov"


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> DiskImage:
    """24 MiB: 1 MiB MBR gap + a 23 MiB ext4 'root' built from files (no root, no mount)."""
    require_binary("mke2fs", "sfdisk", "debugfs", "qemu-img")
    work = tmp_path_factory.mktemp("small-image")
    tree = work / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text('ID=prov-test\nPRETTY_NAME="prov test image"\n')
    (tree / "payload.bin").write_bytes(os.urandom(4 << 20))
    fs = work / "root.ext4"
    fs.touch()  # an existing file keeps mke2fs from announcing that it creates one
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "prov-root", "-d", str(tree), str(fs), "23M"], check=True)
    disk = work / "disk.raw"
    with disk.open("wb") as fh:
        fh.truncate(24 << 20)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, type=83\n", check=True)
    subprocess.run(["dd", f"if={fs}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc", "status=none"], check=True)
    return DiskImage(path=disk, sha256=file_sha256(disk), size=disk.stat().st_size)


def _target(tmp_path: Path, size: str = "64M") -> Path:
    disk = tmp_path / "target.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), size], check=True)
    return disk


@pytest.mark.parametrize("fmt", ["raw", "gz"])
def test_agent_writes_verifies_injects_and_reports(
    ramdisk: Ramdisk, small_image: DiskImage, tmp_path: Path, fmt: str
) -> None:
    served = small_image.path
    if fmt == "gz":
        served = tmp_path / "disk.raw.gz"
        served.write_bytes(gzip.compress(small_image.path.read_bytes(), compresslevel=1))
    image = DiskImage(path=small_image.path, sha256=small_image.sha256, size=small_image.size, format=fmt)
    disk = _target(tmp_path)
    with serve(image, served) as (ctl, base):
        guest = run_deploy(ramdisk, ctl, base, agent_context(base, image, "small-node", PUBKEY), disk, tmp_path)
    out = guest.text()
    assert guest.proc.returncode == 0
    assert "PROV-RAMDISK: run rc=0" in out, guest.tail()
    assert ctl.bad_requests == []
    kinds = [e["event"] for e in ctl.events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "error" not in kinds, ctl.events
    assert "progress" in kinds
    assert "sha256 verified" in ctl.events[-1]["message"]
    assert ctl.gets == ["/agent.sh", "/images/disk"]
    # Outside the root file system the disk is the image, byte for byte.
    with disk.open("rb") as a, small_image.path.open("rb") as b:
        assert a.read(1 << 20) == b.read(1 << 20)
    p1 = partition_file(disk, tmp_path)
    seed = "/var/lib/cloud/seed/nocloud"
    assert 'local-hostname: "small-node"' in debugfs_cat(p1, f"{seed}/meta-data")
    assert PUBKEY in debugfs_cat(p1, f"{seed}/user-data")
    assert MAC in debugfs_cat(p1, f"{seed}/network-config")
    print(f"{fmt}: deploy of {small_image.size >> 20} MiB in {guest.elapsed():.1f}s; {ctl.events[-1]['message']}")


def test_checksum_mismatch_is_reported_and_no_seed_written(
    ramdisk: Ramdisk, small_image: DiskImage, tmp_path: Path
) -> None:
    wrong = DiskImage(path=small_image.path, sha256="0" * 64, size=small_image.size)
    disk = _target(tmp_path)
    with serve(wrong) as (ctl, base):
        guest = run_deploy(ramdisk, ctl, base, agent_context(base, wrong, "bad-node", PUBKEY), disk, tmp_path)
    assert "PROV-RAMDISK: run rc=1" in guest.text(), guest.tail()
    assert guest.proc.returncode == 0  # powered off (deploy.on_error)
    assert [e["event"] for e in ctl.events][-1] == "error"
    assert "checksum mismatch" in ctl.events[-1]["message"]
    assert "seed" not in debugfs_cat(partition_file(disk, tmp_path), "/var/lib/cloud/seed/nocloud/meta-data")


def test_disk_too_small_fails_before_writing(ramdisk: Ramdisk, small_image: DiskImage, tmp_path: Path) -> None:
    disk = _target(tmp_path, "8M")
    with serve(small_image) as (ctl, base):
        guest = run_deploy(ramdisk, ctl, base, agent_context(base, small_image, "tiny-node", PUBKEY), disk, tmp_path)
    assert [e["event"] for e in ctl.events] == ["start", "error"], ctl.events
    assert "smaller than the image" in ctl.events[-1]["message"]
    assert "/images/disk" not in ctl.gets
    assert "PROV-RAMDISK: run rc=1" in guest.text()
