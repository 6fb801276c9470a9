"""HTTP boot files: safe lookup of kernels, initrds and images under the boot root.

iPXE fetches everything after its first stage over HTTP (much faster than
TFTP for kernels and initrds). The route in ``api/routes/boot_files.py`` is
public (firmware has no credentials), so this module is the gate: only
regular files inside ``settings.boot_dir`` are served; ``..``, absolute paths,
NUL bytes, backslashes and symlinks that resolve outside the root are
refused. Range requests and HEAD are handled by Starlette's ``FileResponse``
(RFC 9110 section 14) on the path we resolved.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from provisioner.errors import Forbidden, NotFound


def safe_relpath(requested: str) -> str:
    """A normalised relative path, or Forbidden."""
    if not requested or "\x00" in requested or "\\" in requested:
        raise Forbidden(reason="invalid boot file path")
    if requested.startswith("/"):
        raise Forbidden(reason="absolute boot file paths are refused")
    parts = [p for p in requested.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise Forbidden(reason="boot file path outside the boot root is refused")
    return "/".join(parts)


def resolve_boot_file(root: Path, requested: str) -> Path:
    """The real path of ``requested`` under ``root``: a regular file inside the root, or an error."""
    rel = safe_relpath(requested)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise Forbidden(reason="boot file path outside the boot root is refused")
    try:
        st = os.stat(real)
    except FileNotFoundError as exc:
        raise NotFound(kind="boot file", name=rel) from exc
    except OSError as exc:
        raise Forbidden(reason=f"boot file {rel} is not readable") from exc
    if not stat.S_ISREG(st.st_mode):
        raise NotFound(kind="boot file", name=rel)
    return Path(real)
