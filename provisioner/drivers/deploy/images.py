"""Disk images in the boot root: their sha256, publishing one for the deploy agent, its sidecar.

Shared by the conductor (which checks what an image profile will stream) and
the lab (which publishes its Debian image), so it lives below both.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from provisioner.drivers.boot.http import safe_relpath


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def publish_image(source: Path, boot_dir: Path, rel: str, sha256: str | None = None) -> str:
    """Place ``source`` (raw) at ``boot_dir/rel`` with a ``.sha256`` sidecar; returns ``sha256:<hex>``.

    A hard link when the boot root shares the file system (a 2 GB copy costs
    ~10 s of this machine's disk); a copy otherwise. Idempotent.
    """
    dest = boot_dir / safe_relpath(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = sha256 or file_sha256(source)
    same = dest.exists() and os.path.samefile(dest, source)
    if not same:
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        tmp.replace(dest)
    side = dest.with_name(dest.name + ".sha256")
    side.write_text(f"{digest}  {dest.name}\n")
    return f"sha256:{digest}"


def sidecar_sha256(path: Path) -> str | None:
    """The hex digest of ``path``'s ``.sha256`` sidecar, if one at least as new as the file exists."""
    side = path.with_name(path.name + ".sha256")
    try:
        if side.stat().st_mtime >= path.stat().st_mtime:
            return side.read_text().split()[0].lower()
    except (OSError, IndexError):
        return None
    return None
