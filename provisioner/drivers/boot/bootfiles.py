"""Populate the boot root with the first-stage loaders from Debian packages.

The TFTP server serves only these small first stages (plus per-MAC configs);
everything after iPXE goes over HTTP. Sources (Debian 12 paths):

* ``ipxe``: ``/usr/lib/ipxe/undionly.kpxe`` (BIOS, chains from the NIC's PXE
  ROM via UNDI) and ``/usr/lib/ipxe/ipxe.efi`` (UEFI x86-64)
* ``pxelinux``/``syslinux-common``: ``pxelinux.0`` + ``ldlinux.c32`` (optional)
* ``grub-efi-amd64-signed``: ``grubnetx64.efi`` (optional)

Files are copied, not linked: a symlink out of the boot root is refused by
our TFTP and HTTP servers on purpose. A copy is refreshed only when the
package's file differs, so running transfers are never disturbed needlessly.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootFile:
    name: str  # name in the boot root
    sources: tuple[str, ...]  # first existing one wins
    required: bool


BOOT_FILES: tuple[BootFile, ...] = (
    BootFile("undionly.kpxe", ("/usr/lib/ipxe/undionly.kpxe",), True),
    BootFile("ipxe.efi", ("/usr/lib/ipxe/ipxe.efi",), True),
    BootFile("snponly.efi", ("/usr/lib/ipxe/snponly.efi",), False),
    BootFile("pxelinux.0", ("/usr/lib/PXELINUX/pxelinux.0",), False),
    BootFile("ldlinux.c32", ("/usr/lib/syslinux/modules/bios/ldlinux.c32",), False),
    BootFile("grubnetx64.efi", ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",), False),
)


def populate(boot_dir: Path, files: tuple[BootFile, ...] = BOOT_FILES) -> dict[str, str]:
    """Copy what exists into ``boot_dir``; returns ``{name: "installed"|"current"|"missing"}``.

    A missing *required* loader is logged as an error but not raised: the API
    must still start so an operator can see what is wrong (``apt-get install ipxe``).
    """
    boot_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, str] = {}
    for bf in files:
        src = next((Path(s) for s in bf.sources if Path(s).is_file()), None)
        dest = boot_dir / bf.name
        if src is None:
            result[bf.name] = "missing"
            (log.error if bf.required else log.info)(
                "boot file %s not found (looked in %s)", bf.name, ", ".join(bf.sources))
            continue
        if dest.is_file() and not dest.is_symlink() and filecmp.cmp(src, dest, shallow=False):
            result[bf.name] = "current"
            continue
        tmp = dest.with_name(f".{bf.name}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)  # atomic: a transfer in progress keeps reading the old inode
        result[bf.name] = "installed"
        log.info("boot file %s installed from %s", bf.name, src)
    return result
