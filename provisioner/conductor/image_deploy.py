"""Image-based deploy, controller side: which image a host gets, and the agent script it runs.

An ``image`` profile names a disk image. A relative ``image_url`` is a file of
the boot root (served by ``GET /boot/files/...``, Range and HEAD included);
``drivers.deploy.images.publish_image()`` puts an image there as raw bytes with a ``.sha256``
sidecar, so the checksum is computed once, not per deploy. An absolute URL
(another web server) must come with its raw size in ``params.image_size`` and
its ``image_checksum`` (sha256 of the raw bytes), since the controller cannot
look at the file.

The deploy ramdisk (provisioner.lab.ramdisk, kernel argument ``prov.run``)
fetches ``/install/v1/<token>/agent.sh``, rendered by the deploy driver from
``templates/deploy/agent.sh.j2`` (``agent_script()``): it streams the image to
the disk, verifies the sha256 read back from the disk, writes the NoCloud seed
(hostname, admin SSH keys, network) and reports ``done``; then it reboots,
and the host's next network boot gets the local-boot script (netboot is off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session

from provisioner.conductor.boot_context import boot_context
from provisioner.drivers.boot.http import resolve_boot_file, safe_relpath
from provisioner.drivers.deploy.base import AFTER_DEPLOY, AFTER_ERROR, RAMDISK_INITRD, RAMDISK_KERNEL, DeployInterface
from provisioner.drivers.deploy.images import file_sha256, sidecar_sha256
from provisioner.drivers.deploy.templates import TemplateDeploy
from provisioner.errors import InvalidInput, NotFound
from provisioner.models import Host, Profile
from provisioner.settings import Settings

_FORMATS = {".gz": "gz", ".xz": "xz"}  # anything else is streamed as raw


@dataclass(frozen=True)
class ServedImage:
    url: str  # as the profile names it (relative: a boot-root file)
    sha256: str
    size: int
    format: str
    path: Path | None  # the boot-root file, when local


def _boot_rel(url: str) -> str:
    """A relative image URL as a boot-root path (``/boot/files/`` prefix tolerated)."""
    path = url.split("?", 1)[0]
    return safe_relpath(path.lstrip("/").removeprefix("boot/files/"))


def _checksum_hex(checksum: str) -> str:
    algo, _, digest = checksum.partition(":")
    if algo != "sha256" or len(digest) != 64:
        raise InvalidInput(field="profile.image_checksum",
                           reason=f"the deploy agent verifies sha256: expected 'sha256:<64 hex>', got {checksum!r}")
    return digest.lower()


def served_image(profile: Profile, settings: Settings, *, hash_missing: bool = True) -> ServedImage:
    """What the agent will stream for ``profile``; InvalidInput/NotFound naming the field if it cannot."""
    url = profile.image_url
    if not url:
        raise InvalidInput(field="profile.image_url", reason=f"profile {profile.name} deploys an image but names none")
    fmt = next((f for ext, f in _FORMATS.items() if urlsplit(url).path.endswith(ext)), "raw")
    if urlsplit(url).scheme:
        size = (profile.params or {}).get("image_size")
        if not isinstance(size, int) or size <= 0:
            raise InvalidInput(field="profile.params.image_size",
                               reason="an image on another server needs its raw size in bytes (params.image_size)")
        if not profile.image_checksum:
            raise InvalidInput(field="profile.image_checksum", reason="an image on another server needs its sha256")
        return ServedImage(url, _checksum_hex(profile.image_checksum), size, fmt, None)
    try:
        path = resolve_boot_file(settings.boot_dir, _boot_rel(url))
    except NotFound as exc:
        raise InvalidInput(field="profile.image_url",
                           reason=f"image {url} is not in the boot root {settings.boot_dir}") from exc
    sha = sidecar_sha256(path)
    if sha is None and profile.image_checksum:
        sha = _checksum_hex(profile.image_checksum)
    if sha is None and hash_missing:
        sha = file_sha256(path)
    if sha is not None and profile.image_checksum and _checksum_hex(profile.image_checksum) != sha:
        raise InvalidInput(field="profile.image_checksum",
                           reason=f"image {url} has sha256 {sha}, the profile says {profile.image_checksum}")
    if fmt != "raw" and not isinstance((profile.params or {}).get("image_size"), int):
        raise InvalidInput(field="profile.params.image_size", reason="a compressed image needs its raw size")
    size = int((profile.params or {}).get("image_size") or path.stat().st_size)
    return ServedImage(url, sha or "", size, fmt, path)


def check_boot_files(profile: Profile, settings: Settings) -> None:
    """install.validate() for image profiles: ramdisk kernel + initrd and the image must be in place."""
    for field, url, default in (("profile.kernel_url", profile.kernel_url, RAMDISK_KERNEL),
                                ("profile.initrd_url", profile.initrd_url, RAMDISK_INITRD)):
        if urlsplit(url).scheme:
            continue  # on another server: cannot be checked without a request
        rel = _boot_rel(url or default)
        try:
            resolve_boot_file(settings.boot_dir, rel)
        except NotFound as exc:
            hint = " (the deploy ramdisk: `python -m provisioner.lab.ramdisk ensure`, or `prov lab up`)" \
                if not url else ""
            raise InvalidInput(field=field, reason=f"boot file {rel} is missing from {settings.boot_dir}{hint}") \
                from exc
    served_image(profile, settings, hash_missing=False)


def agent_script(session: Session, host: Host, token: str, settings: Settings, *,
                 deploy: DeployInterface | None = None) -> str:
    """The deploy agent for ``host``: the install boot context plus its ``image`` and ``deploy`` parts."""
    profile = session.get(Profile, host.profile_id) if host.profile_id is not None else None
    if profile is None or profile.install_method != "image":
        raise InvalidInput(field="profile", reason=f"host {host.name}'s profile does not deploy an image")
    ctx: dict[str, Any] = boot_context(session, host, settings, token=token)
    img = served_image(profile, settings)
    ctx["image"] = {"url": ctx["profile"]["image_url"], "sha256": img.sha256, "size": img.size, "format": img.format}
    expires = host.install_token_expires
    # New per deploy (cloud-init re-runs its first-boot modules), and never the token itself.
    stamp = int(expires.timestamp()) if expires is not None else 0
    ctx["deploy"] = {"instance_id": f"prov-{host.id}-{stamp}", "after": AFTER_DEPLOY, "on_error": AFTER_ERROR}
    return (deploy or TemplateDeploy(settings)).render_agent_script(ctx)
