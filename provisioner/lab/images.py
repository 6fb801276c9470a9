"""Disk images for image-based deploy: the lab's Debian 12 image, and preparing any image for the agent.

``ensure_image()`` builds (once, cached) the default OS of the lab's image
path with ``recipes/build-image.sh`` (package data; ``deploy/build-image.sh`` in
a checkout): a raw disk with one ext4 partition
labelled ``prov-root``, GRUB for BIOS, Debian's cloud kernel, systemd,
openssh-server and cloud-init. Why this layout:

* GRUB, not a direct-kernel layout: a deployed lab host must boot from its
  disk through the firmware exactly like bare metal (the controller switches
  the boot device to disk); GRUB with ``timeout=0`` costs ~2 s of a ~60 s
  TCG boot.
* The cloud kernel: the generic kernel carries 300 MB of bare-metal modules
  that every deploy would have to stream, write and read back.
* Tight: the file system is the tree plus 1/8 and 48 MiB; cloud-init's growpart and
  resize_rootfs grow it to the disk on the first boot. Every byte costs time
  under TCG (the ramdisk's busybox hashes ~12 MB/s there).
* Built from files (``mke2fs -d``, ``grub-mkimage`` + ``boot.img`` written
  into the MBR gap): no loop device or mount, which this machine's kernel
  could not partition-scan anyway.
* cloud-init rather than a home-made first-boot unit: it is what reads NoCloud
  seeds everywhere (and what a user's own image will carry), and Ansible needs
  python3 on the host anyway.

``prepare_image()`` is what the controller serves to the deploy agent: raw
(qcow2 converted once with ``qemu-img``; busybox cannot read qcow2, and a raw
stream lets ``dd`` write it as it arrives), with the sha256 and size the agent
verifies against.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioner.drivers.deploy.images import file_sha256
from provisioner.errors import BootError, InvalidInput
from provisioner.lab.ramdisk import RECIPES_DIR, build_cached, run_checked

DEFAULT_CACHE_DIR = Path("/var/cache/prov-test/images")
BUILD_SCRIPT = RECIPES_DIR / "build-image.sh"
_OUTPUTS = ("disk.raw", "disk.raw.sha256", "packages.txt")

# qcow2 files start with "QFI\xfb" (docs/interop/qcow2.txt in QEMU).
_QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class DiskImage:
    path: Path
    sha256: str  # hex, of the raw bytes
    size: int  # bytes
    format: str = "raw"  # what the agent's stream carries: raw | gz | xz

    def agent_context(self, url: str) -> dict[str, object]:
        """The ``image`` part of templates/deploy/agent.sh.j2's context."""
        return {"url": url, "sha256": self.sha256, "size": self.size, "format": self.format}


def image_key() -> str:
    """Package list + recipe hash, as the build script computes it."""
    return run_checked([str(BUILD_SCRIPT), "--key"]).strip()


def ensure_image(cache_dir: Path | None = None) -> DiskImage:
    """The lab's Debian 12 raw image, built once per recipe (cold: minutes; warm: instant)."""
    cache = cache_dir or DEFAULT_CACHE_DIR
    key = image_key()

    def build(out: Path) -> None:
        # The debootstrapped tree is cached apart, so a change to the disk
        # assembly does not repeat debootstrap.
        env = dict(os.environ, PROV_ROOTFS_CACHE=str(cache / "rootfs"))
        run_checked([str(BUILD_SCRIPT), str(out)], env=env)

    key_dir = build_cached(cache, key, build, _OUTPUTS)
    disk = key_dir / "disk.raw"
    sha = (key_dir / "disk.raw.sha256").read_text().split()[0]
    return DiskImage(path=disk, sha256=sha, size=disk.stat().st_size)


def _checksum_matches(path: Path, checksum: str) -> None:
    algo, _, want = checksum.partition(":")
    if algo != "sha256" or len(want) != 64:
        raise InvalidInput(field="image_checksum", reason=f"expected 'sha256:<64 hex digits>', got {checksum!r}")
    got = file_sha256(path)
    if got != want.lower():
        raise BootError(reason=f"image {path.name}: sha256 is {got}, the profile says {want}")


def prepare_image(source: Path, out_dir: Path, checksum: str | None = None) -> DiskImage:
    """Turn a downloaded image into what the deploy agent streams: raw + sha256 + size.

    ``checksum`` (``sha256:<hex>``, as in a profile) is checked against the
    file as published (qcow2 or raw) before anything else. A qcow2 image is
    converted to ``out_dir/<name>.raw`` once; a raw image is used in place.
    """
    if checksum:
        _checksum_matches(source, checksum)
    with source.open("rb") as fh:
        magic = fh.read(4)
    if magic != _QCOW2_MAGIC:
        return DiskImage(path=source, sha256=file_sha256(source), size=source.stat().st_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{source.stem}.raw"
    tmp = raw.with_suffix(".raw.tmp")
    proc = subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(source), str(tmp)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BootError(reason=f"qemu-img convert {source.name}: {proc.stderr.strip()[-300:]}")
    tmp.rename(raw)
    return DiskImage(path=raw, sha256=file_sha256(raw), size=raw.stat().st_size)


def main() -> int:
    img = ensure_image()
    print(f"{img.path}\nsha256={img.sha256}\nsize={img.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
