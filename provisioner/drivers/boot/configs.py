"""Boot configs (iPXE scripts, pxelinux and GRUB per-MAC files) rendered from a plain context.

Which config a machine gets (install, local boot, discovery) is the
conductor's decision (conductor/netboot.py); this module only knows the
kinds, the template names and how URLs are spelt for each boot loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from provisioner.errors import InvalidInput
from provisioner.render import render
from provisioner.settings import Settings

BOOT_KINDS = ("ipxe", "pxelinux", "grub")


def check_kind(kind: str) -> str:
    if kind not in BOOT_KINDS:
        raise InvalidInput(field="kind", reason=f"unknown boot config kind {kind!r} (one of {', '.join(BOOT_KINDS)})")
    return kind


def render_config(kind: str, name: str, context: Mapping[str, Any], settings: Settings | None = None) -> str:
    """``templates/<kind>/<name>.j2`` with ``context`` (operators' overrides included).

    ``name`` is install, local or discover (every kind), or boot (iPXE's first stage).
    """
    return render(f"{check_kind(kind)}/{name}.j2", dict(context), settings)


def boot_file_url(url: str, base_url: str) -> str:
    """Absolute URLs stay; a relative path is a file of the boot root, served at /boot/files/."""
    if not url:
        return ""
    if urlsplit(url).scheme:
        return url
    return urljoin(f"{base_url}/boot/files/", url.lstrip("/"))


def grub_path(url: str) -> str:
    """GRUB names network files ``(proto,server)/path`` instead of URLs."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "tftp") and parts.netloc:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return f"({parts.scheme},{parts.netloc}){path}"
    return url


def installer_urls(kernel_url: str, initrd_url: str, base_url: str) -> dict[str, str]:
    """The kernel and initrd of an install boot, as URLs and as GRUB paths."""
    kernel = boot_file_url(kernel_url, base_url)
    initrd = boot_file_url(initrd_url, base_url)
    return {"kernel": kernel, "initrd": initrd, "kernel_grub": grub_path(kernel), "initrd_grub": grub_path(initrd)}


def discovery_context(mac: str, base_url: str) -> dict[str, Any]:
    """What ``<kind>/discover.j2`` gets for a MAC prov does not know."""
    return {"mac": mac, "base_url": base_url}


def first_stage_context(base_url: str) -> dict[str, Any]:
    """What ``ipxe/boot.j2`` gets: it only chains to ``/boot/ipxe/${mac}``, the same for every host."""
    return {"base_url": base_url}
