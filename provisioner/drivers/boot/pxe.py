"""Per-host boot configs (iPXE scripts, pxelinux and GRUB per-MAC files) and the template context.

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
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

from sqlmodel import Session

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import install_tokens
from provisioner.errors import InvalidInput
from provisioner.models import Host, Nic, Profile
from provisioner.render import render
from provisioner.settings import Settings, get_settings
from provisioner.validators import normalize_mac

log = logging.getLogger(__name__)

BOOT_KINDS = ("ipxe", "pxelinux", "grub")
# Hosts in these states may be handed an installer (if netboot is also on).
INSTALL_STATES = frozenset({S.INSTALLING, S.INSTALL_WAIT})
# Shown instead of a real token in previews: rendering a preview must not
# invalidate the token of an install in progress.
PREVIEW_TOKEN = "PREVIEW-TOKEN"  # noqa: S105 - a placeholder, not a secret
# Image profiles boot prov's deploy ramdisk unless they name their own kernel:
# boot-root paths where ``prov serve`` / the lab place provisioner.lab.ramdisk's build.
RAMDISK_KERNEL = "prov/vmlinuz"
RAMDISK_INITRD = "prov/initrd.img"

# Defaults per OS family; a profile's params override every one of them.
_FAMILY_DEFAULTS: dict[str, dict[str, str]] = {
    "debian": {"mirror": "http://deb.debian.org/debian", "release": "bookworm"},
    "ubuntu": {"mirror": "http://archive.ubuntu.com/ubuntu", "release": "noble"},
    "rhel": {"mirror": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/", "release": "9"},
    "fedora": {
        "mirror": "https://dl.fedoraproject.org/pub/fedora/linux/releases/40/Everything/x86_64/os/",
        "release": "40",
    },
}

# The install files are line-oriented (preseed lines, kickstart commands, a
# kernel command line): a newline or space in a parameter would inject another
# directive, so every parameter is checked against a narrow pattern.
_PARAM_RULES: dict[str, re.Pattern[str]] = {
    "admin_user": re.compile(r"^[a-z_][a-z0-9_-]{0,31}$"),  # useradd's portable names
    "timezone": re.compile(r"^[A-Za-z0-9_+./-]{1,64}$"),
    "locale": re.compile(r"^[A-Za-z0-9_.@-]{1,64}$"),
    "keyboard": re.compile(r"^[A-Za-z0-9_-]{1,32}$"),
    "mirror": re.compile(r"^(https?|ftp)://[^\s'\"\\]+$"),
    "proxy": re.compile(r"^(|https?://[^\s'\"\\]+)$"),
    "disk": re.compile(r"^(|/dev/[A-Za-z0-9/_.-]+)$"),
    "release": re.compile(r"^[A-Za-z0-9._-]{1,32}$"),
    "domain": re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"),
}
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9@^_.+:-]{1,128}$")
# An OpenSSH public key line: type, base64 blob, optional comment; no newlines or quotes.
_SSH_KEY_RE = re.compile(r"^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\r\n'\"\\]{0,200})?$")


def _param(params: dict[str, Any], key: str, default: str) -> str:
    value = params.get(key, default)
    value = default if value is None else str(value)
    rule = _PARAM_RULES.get(key)
    if rule is not None and not rule.match(value):
        raise InvalidInput(field=f"profile.params.{key}", reason=f"invalid value {value!r}")
    return value


def _str_list(params: dict[str, Any], key: str, rule: re.Pattern[str]) -> list[str]:
    raw = params.get(key) or []
    items = [raw] if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not rule.match(text):
            raise InvalidInput(field=f"profile.params.{key}", reason=f"invalid entry {text[:60]!r}")
        out.append(text)
    return out


def install_params(profile: Profile) -> dict[str, Any]:
    """The ``install`` part of the context: the profile's params with per-family defaults, checked."""
    params = dict(profile.params or {})
    fam = _FAMILY_DEFAULTS.get(profile.os_family, _FAMILY_DEFAULTS["debian"])
    mirror = _param(params, "mirror", fam["mirror"])
    parts = urlsplit(mirror)
    return {
        "admin_user": _param(params, "admin_user", "prov"),
        "ssh_authorized_keys": _str_list(params, "ssh_authorized_keys", _SSH_KEY_RE),
        "timezone": _param(params, "timezone", "UTC"),
        "locale": _param(params, "locale", "en_US.UTF-8"),
        "keyboard": _param(params, "keyboard", "us"),
        "mirror": mirror,
        # Debian's installer wants the mirror split into protocol, host and directory.
        "mirror_scheme": parts.scheme,
        "mirror_host": parts.netloc,
        "mirror_dir": parts.path or "/",
        "proxy": _param(params, "proxy", ""),
        "disk": _param(params, "disk", ""),
        "release": _param(params, "release", fam["release"]),
        "packages": _str_list(params, "packages", _PACKAGE_RE),
    }


def _resolve(url: str, base_url: str) -> str:
    """Absolute URLs stay; a relative path is a file of the boot root, served at /boot/files/."""
    if not url:
        return ""
    if urlsplit(url).scheme:
        return url
    return urljoin(f"{base_url}/boot/files/", url.lstrip("/"))


def _grub_path(url: str) -> str:
    """GRUB names network files ``(proto,server)/path`` instead of URLs."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "tftp") and parts.netloc:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return f"({parts.scheme},{parts.netloc}){path}"
    return url


def _boot_nic(nics: list[Nic], mac: str | None) -> Nic | None:
    if mac:
        for n in nics:
            if n.mac == mac:
                return n
    for n in nics:
        if n.boot:
            return n
    return nics[0] if nics else None


def _nic_dict(n: Nic) -> dict[str, Any]:
    return {"mac": n.mac, "mac_hyphen": n.mac.replace(":", "-"), "name": n.name, "ip": n.ip or "", "boot": n.boot}


def boot_context(
    session: Session,
    host: Host,
    settings: Settings | None = None,
    *,
    token: str | None = None,
    mac: str | None = None,
) -> dict[str, Any]:
    """The template context for ``host``: host, nic(s), profile, install params, token and URLs.

    ``token`` is the plain one-time token when rendering for a real boot or a
    real installer request; without it a placeholder is used (previews).
    Templates only ever see plain dicts and lists, never ORM objects.
    """
    s = settings or get_settings()
    base = s.base_url
    assert host.id is not None
    nics = crud.host_nics(session, host_id=host.id)
    nic = _boot_nic(nics, normalize_mac(mac) if mac else None)
    if nic is None:
        raise InvalidInput(field="nics", reason=f"host {host.name} has no NIC to boot from")
    profile = session.get(Profile, host.profile_id) if host.profile_id is not None else None
    tok = token or PREVIEW_TOKEN
    install_base = f"{base}/install/v1/{tok}"
    ctx: dict[str, Any] = {
        "base_url": base,
        "token": tok,
        "mac": nic.mac,
        "nic": _nic_dict(nic),
        "nics": [_nic_dict(n) for n in nics],
        "urls": {
            "config": f"{install_base}/config",
            "nocloud": f"{install_base}/",
            "events": f"{install_base}/events",
            "report": f"{install_base}/report",
            "boot_script": f"{base}/boot/ipxe/{nic.mac}",
        },
    }
    domain = "localdomain"
    if profile is not None:
        ctx["install"] = install_params(profile)
        domain = _param(dict(profile.params or {}), "domain", domain)
        kernel_url, initrd_url = profile.kernel_url, profile.initrd_url
        if profile.install_method == "image":
            # The deploy ramdisk's /init fetches and runs prov.run (the per-host agent script).
            kernel_url, initrd_url = kernel_url or RAMDISK_KERNEL, initrd_url or RAMDISK_INITRD
            ctx["urls"]["agent"] = f"{install_base}/agent.sh"
        kernel = _resolve(kernel_url, base)
        initrd = _resolve(initrd_url, base)
        ctx["urls"].update(kernel=kernel, initrd=initrd, kernel_grub=_grub_path(kernel),
                           initrd_grub=_grub_path(initrd))
        ctx["profile"] = {
            "name": profile.name,
            "os_family": profile.os_family,
            "install_method": profile.install_method,
            "kernel_url": profile.kernel_url,
            "initrd_url": profile.initrd_url,
            "image_url": _resolve(profile.image_url, base),
            "image_checksum": profile.image_checksum,
            "kernel_args": profile.kernel_args,
            "container_engine": profile.container_engine,
        }
    ctx["host"] = {
        "id": host.id,
        "name": host.name,
        "hostname": host.name,
        "domain": domain,
        "fqdn": f"{host.name}.{domain}",
        "roles": list(host.roles or []),
        "ip": host.ip_address or nic.ip or "",
    }
    return ctx


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


def discovery_context(mac: str, settings: Settings | None = None) -> dict[str, Any]:
    s = settings or get_settings()
    return {"mac": mac, "base_url": s.base_url}


def boot_config_for_mac(session: Session, mac: str, kind: str, settings: Settings | None = None) -> str | None:
    """The boot config a machine with ``mac`` gets for ``kind`` (ipxe, pxelinux, grub), or None.

    None means "serve nothing" (unknown MAC with unknown_mac_action=ignore).
    An install config mints a fresh one-time token for the host.
    """
    s = settings or get_settings()
    if kind not in BOOT_KINDS:
        raise InvalidInput(field="kind", reason=f"unknown boot config kind {kind!r} (one of {', '.join(BOOT_KINDS)})")
    try:
        norm = normalize_mac(mac)
    except ValueError as exc:
        raise InvalidInput(field="mac", reason=str(exc)) from exc
    host = crud.host_by_mac(session, mac=norm)
    if host is None:
        if s.unknown_mac_action == "discover":
            log.info("boot: unknown MAC %s asked for %s config: discovery", norm, kind)
            return render(f"{kind}/discover.j2", discovery_context(norm, s), s)
        log.info("boot: unknown MAC %s asked for %s config: ignored", norm, kind)
        return None
    if install_allowed(host):
        # Render with a placeholder first so a broken template or bad profile
        # fails before a token is minted (minting kills the previous token).
        render(f"{kind}/install.j2", boot_context(session, host, s, mac=norm), s)
        token = install_tokens.mint(session, host, s)
        ctx = boot_context(session, host, s, token=token, mac=norm)
        log.info("boot: %s (%s) gets the %s install config", host.name, norm, kind)
        return render(f"{kind}/install.j2", ctx, s)
    log.info("boot: %s (%s) gets the %s local-boot config (netboot %s, state %s)", host.name, norm, kind,
             "on" if host.netboot else "off", host.state)
    return render(f"{kind}/local.j2", boot_context(session, host, s, mac=norm), s)


def preview_boot_config(session: Session, host: Host, kind: str, settings: Settings | None = None) -> str:
    """What ``host`` would get for ``kind`` now, with a placeholder token (mints nothing)."""
    s = settings or get_settings()
    ctx = boot_context(session, host, s)
    name = "install" if install_allowed(host) else "local"
    return render(f"{kind}/{name}.j2", ctx, s)


def first_stage_script(settings: Settings | None = None) -> str:
    """``boot.ipxe``: the static script iPXE clients get first (HTTP, or a file in the TFTP root).

    It only chains to ``/boot/ipxe/${mac}``, so it never needs re-rendering per host.
    """
    s = settings or get_settings()
    return render("ipxe/boot.j2", {"base_url": s.base_url}, s)
