"""The lab's Debian 12 image end to end: build (cached), deploy through the agent, first boot, SSH.

Slow under TCG (a ~440 MiB image: busybox hashes it at ~12 MB/s on an idle
machine; then a systemd + cloud-init first boot), so it runs only with
PROV_SLOW_TESTS=1. test_image_deploy.py covers the agent itself in CI.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.images import DiskImage, ensure_image
from provisioner.lab.ramdisk import Ramdisk
from tests.integration.payloads.fake_controller import (
    ADMIN,
    MAC,
    agent_context,
    debugfs_cat,
    partition_file,
    run_deploy,
    serve,
)
from tests.support.helpers import free_port, require_binary, require_root

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("PROV_SLOW_TESTS") != "1", reason="slow (~8 min under TCG): PROV_SLOW_TESTS=1"),
]

HOSTNAME = "deployed-node"
DISK_SIZE = "4G"  # bigger than the image: growpart has something to grow into


@pytest.fixture(scope="module")
def lab_image() -> DiskImage:
    require_root()  # debootstrap, chroot
    # boot.img and the i386-pc modules come from the package grub-pc-bin.
    require_binary("debootstrap", "mke2fs", "sfdisk", "grub-mkimage", "qemu-img", "/usr/lib/grub/i386-pc/boot.img")
    started = time.monotonic()
    img = ensure_image()
    print(f"lab image {img.size / 2**20:.0f} MiB ready in {time.monotonic() - started:.1f}s")
    return img


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("ssh-keygen", "ssh")
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def deployed(ramdisk: Ramdisk, lab_image: DiskImage, ssh_key: Path, tmp_path_factory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("lab-deploy")
    disk = work / "target.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), DISK_SIZE], check=True)
    pubkey = ssh_key.with_suffix(".pub").read_text().strip()
    with serve(lab_image) as (ctl, base):
        ctx = agent_context(base, lab_image, HOSTNAME, pubkey)
        guest = run_deploy(ramdisk, ctl, base, ctx, disk, work, timeout=900)
    return {"disk": disk, "guest": guest, "ctl": ctl, "work": work}


def test_lab_image_deploys(deployed: dict[str, Any], lab_image: DiskImage, ssh_key: Path) -> None:
    ctl, guest = deployed["ctl"], deployed["guest"]
    assert "PROV-RAMDISK: run rc=0" in guest.text(), guest.tail()
    assert [e["event"] for e in ctl.events][-1] == "done", ctl.events
    p1 = partition_file(deployed["disk"], deployed["work"])
    assert f'local-hostname: "{HOSTNAME}"' in debugfs_cat(p1, "/var/lib/cloud/seed/nocloud/meta-data")
    print(f"deploy: {guest.elapsed():.1f}s for {lab_image.size / 2**20:.0f} MiB; {ctl.events[-1]['message']}")


def test_deployed_disk_boots_with_the_seed(deployed: dict[str, Any], boot_guest, ssh_key: Path) -> None:
    """Firmware -> GRUB -> Debian -> cloud-init applies the seed; SSH in with the injected key."""
    ssh_port = free_port()
    guest = boot_guest(
        [
            # Two vCPUs: multi-threaded TCG lets systemd's parallel start use both host cores.
            "-smp", "2",
            "-drive", f"file={deployed['disk']},format=raw,if=none,id=d0,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0,bootindex=1",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
            "-device", "virtio-rng-pci",
        ],
        name="firstboot",
        memory="512",
    )  # fmt: skip
    guest.wait_for(rf"{HOSTNAME} login:", 600)
    login = guest.elapsed()
    guest.wait_for(r"PROV-FIRSTBOOT: cloud-init", 400)
    final = guest.elapsed()
    ssh = [
        "ssh", "-i", str(ssh_key), "-p", str(ssh_port), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30",
        f"{ADMIN}@127.0.0.1",
    ]  # fmt: skip
    result = subprocess.run([*ssh, "hostname; df -m / | tail -1"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    name, df = result.stdout.splitlines()[:2]
    assert name == HOSTNAME
    # growpart + resize_rootfs took the root file system to (nearly) the whole 4 GiB disk.
    assert int(df.split()[1]) > 3500, df
    # Password logins are refused (only the injected key works).
    pw = subprocess.run(
        [*ssh[:-1], "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no", ssh[-1], "true"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pw.returncode != 0
    print(f"first boot: login prompt {login:.1f}s, cloud-init final {final:.1f}s")
