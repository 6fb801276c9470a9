"""Netboot policy: what a machine that network-boots gets, and the one-time install token.

One decision, made here and nowhere else: does a machine that network-boots get
an installer? Only when its host has netboot on, is in an install state
(installing / install-wait, i.e. the install workflow put it there) and has a
profile. Everything else boots its local disk, and an unknown MAC gets nothing
or a discovery script (``settings.unknown_mac_action``), never an installer.
That is what makes a reinstall loop impossible: "done" turns netboot off and
moves the host out of install-wait, so the next PXE boot is a local boot.

An install boot mints the host's one-time token (install_tokens.mint), which
replaces any earlier token: only the hash is stored, so the token can only be
put on the command line at the moment the boot config is rendered.

The rendering itself is the boot driver's (``BootInterface.render_config``);
every function takes one as ``boot`` (a fake in unit tests), the shipped
``NetworkBoot`` by default.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlmodel import Session

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import install_tokens
from provisioner.conductor.boot_context import boot_context
from provisioner.drivers.boot import configs
from provisioner.drivers.boot.base import BootInterface
from provisioner.drivers.boot.http import resolve_boot_file
from provisioner.drivers.boot.network import NetworkBoot
from provisioner.errors import InvalidInput
from provisioner.models import Host
from provisioner.settings import Settings, get_settings
from provisioner.validators import normalize_mac

log = logging.getLogger(__name__)

# Hosts in these states may be handed an installer (if netboot is also on).
INSTALL_STATES = frozenset({S.INSTALLING, S.INSTALL_WAIT})


def install_allowed(host: Host) -> bool:
    """May a network boot of this host start an installer right now?"""
    return bool(host.netboot) and host.state in INSTALL_STATES and host.profile_id is not None


def settings_for_request(settings: Settings, request_base: str) -> Settings:
    """Settings whose base URL is the one the machine used, when no public_url is configured.

    Firmware and installers on a provisioning network reach the controller at
    an address of that network (the lab forwards its bridge address to a
    controller on loopback); the scripts they get must name that address, not
    127.0.0.1. An explicit ``public_url`` always wins. A spoofed Host header
    only changes the response to the spoofing client itself.
    """
    if settings.public_url:
        return settings
    return settings.model_copy(update={"public_url": request_base.rstrip("/")})


def boot_config_for_mac(session: Session, mac: str, kind: str, settings: Settings | None = None, *,
                        boot: BootInterface | None = None) -> str | None:
    """The boot config a machine with ``mac`` gets for ``kind`` (ipxe, pxelinux, grub), or None.

    None means "serve nothing" (unknown MAC with unknown_mac_action=ignore).
    An install config mints a fresh one-time token for the host.
    """
    s = settings or get_settings()
    b = boot or NetworkBoot(s)
    configs.check_kind(kind)
    try:
        norm = normalize_mac(mac)
    except ValueError as exc:
        raise InvalidInput(field="mac", reason=str(exc)) from exc
    host = crud.host_by_mac(session, mac=norm)
    if host is None:
        if s.unknown_mac_action == "discover":
            log.info("boot: unknown MAC %s asked for %s config: discovery", norm, kind)
            return b.render_config(kind, "discover", configs.discovery_context(norm, s.base_url))
        log.info("boot: unknown MAC %s asked for %s config: ignored", norm, kind)
        return None
    if install_allowed(host):
        # Render with a placeholder first so a broken template or bad profile
        # fails before a token is minted (minting kills the previous token).
        b.render_config(kind, "install", boot_context(session, host, s, mac=norm))
        token = install_tokens.mint(session, host, s)
        ctx = boot_context(session, host, s, token=token, mac=norm)
        log.info("boot: %s (%s) gets the %s install config", host.name, norm, kind)
        return b.render_config(kind, "install", ctx)
    log.info("boot: %s (%s) gets the %s local-boot config (netboot %s, state %s)", host.name, norm, kind,
             "on" if host.netboot else "off", host.state)
    return b.render_config(kind, "local", boot_context(session, host, s, mac=norm))


def preview_boot_config(session: Session, host: Host, kind: str, settings: Settings | None = None, *,
                        boot: BootInterface | None = None) -> str:
    """What ``host`` would get for ``kind`` now, with a placeholder token (mints nothing)."""
    s = settings or get_settings()
    b = boot or NetworkBoot(s)
    ctx = boot_context(session, host, s)
    return b.render_config(kind, "install" if install_allowed(host) else "local", ctx)


def first_stage_script(settings: Settings | None = None, *, boot: BootInterface | None = None) -> str:
    """``boot.ipxe``: the static script iPXE clients get first (HTTP, or a file in the TFTP root).

    It only chains to ``/boot/ipxe/${mac}``, so it never needs re-rendering per host.
    """
    s = settings or get_settings()
    b = boot or NetworkBoot(s)
    return b.render_config("ipxe", "boot", configs.first_stage_context(s.base_url))


def boot_file(settings: Settings, requested: str) -> Path:
    """The boot-root file ``GET /boot/files/{requested}`` serves (Forbidden/NotFound otherwise)."""
    return resolve_boot_file(settings.boot_dir, requested)
