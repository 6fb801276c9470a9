"""Netboot policy: what a machine that network-boots gets, and the one-time install token.

One decision, made here and nowhere else: does a machine that network-boots get
an installer? Only when its host has netboot on, is in an install state
(installing / install-wait, i.e. the install workflow put it there) and has a
profile. Everything else boots its local disk, and an unknown MAC gets nothing
or a discovery script (``settings.unknown_mac_action``), never an installer.
That is what makes a reinstall loop impossible: "done" turns netboot off and
moves the host out of install-wait, so the next PXE boot is a local boot.

The install token belongs to the boot, not to a fetch
-----------------------------------------------------
Boot scripts are public (firmware carries no credential), so anyone on the
provisioning network who knows an installing host's MAC can fetch its script.
Until issue 18 every fetch minted a new token and so revoked the previous one:
a stranger got a working token *and* the real installer was locked out (403).

Now the token is minted once per netboot-on (the install workflow's netboot-on
step, install_tokens.mint; lazily on the first fetch if netboot was turned on
without one) and every later fetch of the boot script, over HTTP or as a
pxelinux/GRUB per-MAC config over TFTP, renders *the same* token again from its
ciphertext (install_tokens.for_boot): no fetch mints while a token is live, and
no fetch revokes. The token still dies only where it did: install done, error,
failure, abort (install_tokens.revoke), and at its expiry.

Why re-render rather than hand the token out on the first fetch only: a
firmware retry (a lost TCP segment, iPXE's own retries), a machine reset during
the installer's start, or a second boot NIC asking are ordinary, and a boot
that got a "boot locally" script instead would stall until the install-wait
deadline and fail. Re-rendering means that whoever can fetch the script while
the host installs can read the token; that is inherent to PXE (the installer
fetches its config over plain HTTP on the same network, so a listener there
sees the token anyway), and what matters is that the fetch takes nothing away
from the real installer. The exposure is bounded:

* only while the host is installing / install-wait with netboot on (no script
  carries a token before netboot-on or after done/failure);
* the token opens only that host's install routes, only in those states, and
  dies at done/error/abort/expiry (install_tokens.verify);
* every fetch that carries the token leaves a history line with the address
  it came from, so a stranger's fetch is visible where the operator looks;
* boot scripts, install callbacks and TFTP per-MAC configs are rate-limited
  per source address (provisioner/ratelimit.py).

A host whose live token cannot be rendered again (minted before tokens were
stored encrypted, or the secret key changed) gets a local-boot config and a
history line: its token is never replaced by an anonymous fetch.

The rendering itself is the boot driver's (``BootInterface.render_config``);
every function takes one as ``boot`` (a fake in unit tests), the shipped
``NetworkBoot`` by default.
"""

from __future__ import annotations

import ipaddress
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
from provisioner.models import Event, Host
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
                        boot: BootInterface | None = None, source: str | None = None) -> str | None:
    """The boot config a machine with ``mac`` gets for ``kind`` (ipxe, pxelinux, grub), or None.

    None means "serve nothing" (unknown MAC with unknown_mac_action=ignore). An install config
    carries this boot's token (the live one again, or a fresh one if none is live: never a
    replacement for a live one); ``source`` is the address that asked, for the history line.
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
        # fails before a token is minted.
        b.render_config(kind, "install", boot_context(session, host, s, mac=norm))
        got = install_tokens.for_boot(session, host, s)
        where = _address(source)
        if got.token is None:
            _note(session, host, f"{kind} boot config fetched from {where}: this install's token cannot be "
                                 "shown again (minted before tokens were stored encrypted, or the secret key "
                                 "changed); local boot, the token is left alone")
            log.warning("boot: %s (%s) asked for its %s install config from %s: token not re-issuable, "
                        "local boot", host.name, norm, kind, where)
            return b.render_config(kind, "local", boot_context(session, host, s, mac=norm))
        text = b.render_config(kind, "install", boot_context(session, host, s, token=got.token, mac=norm))
        how = "minted on this first fetch" if got.minted else "sent again: nothing minted or revoked"
        _note(session, host, f"{kind} boot config fetched from {where}: install config with this boot's "
                             f"token ({how})")
        log.info("boot: %s (%s) gets the %s install config (from %s)", host.name, norm, kind, where)
        return text
    log.info("boot: %s (%s) gets the %s local-boot config (netboot %s, state %s)", host.name, norm, kind,
             "on" if host.netboot else "off", host.state)
    return b.render_config(kind, "local", boot_context(session, host, s, mac=norm))


def _address(source: str | None) -> str:
    """``source`` if it is an IP address (it may come from a proxy header), else a fixed word."""
    if not source:
        return "an unknown address"
    try:
        return str(ipaddress.ip_address(source))
    except ValueError:
        return "an unknown address"


def _note(session: Session, host: Host, message: str) -> None:
    session.add(Event(host_id=host.id, event="boot-fetch", message=message, actor="boot"))
    session.commit()


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
