"""Why a rendered preview may not be what a machine gets, or what it needs (``prov template render``).

A preview renders whatever kind it is asked for, for any host: a kickstart for a
Debian image profile comes out ``#version=RHEL9`` with a Debian mirror, and
nothing in the text says that no machine will ever be served it (issue 19, item
4). These rules look at plain values (the conductor's preview passes them in)
and return warnings; the preview is still rendered and still exits 0 unless the
caller asks for ``--strict``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

# The OS families each installer's config file installs (schemas.OsFamily names them): a
# kickstart drives Anaconda, a preseed debian-installer, autoinstall Subiquity (Ubuntu 20.04
# and later; Ubuntu's own debian-installer ended with 20.04, so a preseed is Debian's only).
KIND_FAMILIES: dict[str, tuple[str, ...]] = {
    "kickstart": ("rhel",),
    "preseed": ("debian",),
    "autoinstall": ("ubuntu",),
}
INSTALLER = {"kickstart": "Anaconda", "preseed": "debian-installer", "autoinstall": "Ubuntu's Subiquity"}
# Boot configs fetched over TFTP (drivers/boot): no HTTP request, so no request address to
# fall back on; what the preview shows is what the machine gets.
TFTP_KINDS = frozenset({"pxelinux", "grub"})


@dataclass(frozen=True)
class RenderWarning:
    """One reason to look twice at a preview; ``code`` is stable, ``message`` is one line for people."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def kind_warnings(kind: str, *, profile: str, os_family: str, install_method: str) -> list[RenderWarning]:
    """An install file kind the host's profile does not use, or one for another OS family."""
    families = KIND_FAMILIES.get(kind)
    if families is None:  # a boot kind: every install method netboots
        return []
    out: list[RenderWarning] = []
    if install_method != kind:
        served = "the deploy agent script" if install_method == "image" else f"its {install_method} file"
        out.append(RenderWarning(
            "kind_not_used",
            f"profile {profile} installs with {install_method}: the host is never served a {kind} "
            f"(it gets {served}); this only shows what one would look like"))
    if os_family not in families:
        out.append(RenderWarning(
            "os_family_mismatch",
            f"a {kind} drives {INSTALLER[kind]} ({'/'.join(families)}), but profile {profile} is "
            f"{os_family}: the file mixes one OS's installer with the other's settings (mirror, release)"))
    return out


def _unreachable_host(url: str) -> str | None:
    """'loopback' / 'wildcard' when no other machine can use ``url``'s host, else None."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "wildcard"
    return None


def url_warnings(kind: str, *, base_url: str, public_url: str | None, text: str) -> list[RenderWarning]:
    """The controller URL in ``text`` is one no installer reaches (PROV_PUBLIC_URL unset, loopback listen)."""
    if public_url or base_url not in text:
        return []
    what = _unreachable_host(base_url)
    if what is None:
        return []
    tail = ("over TFTP the machine gets exactly this" if kind in TFTP_KINDS else
            "over HTTP a machine gets the address it asked at instead, but pxelinux/GRUB configs over TFTP "
            "keep this one")
    return [RenderWarning(
        "public_url_unset",
        f"PROV_PUBLIC_URL is unset: installers are pointed at {base_url}, a {what} address no other machine "
        f"reaches ({tail}); set PROV_PUBLIC_URL to the URL your machines reach the controller at")]


def key_warnings(kind: str, *, keys: list[str]) -> list[RenderWarning]:
    """An install file after which no SSH key lets anyone in (its passwords are locked)."""
    if kind not in KIND_FAMILIES or keys:
        return []
    return [RenderWarning(
        "no_ssh_key",
        "no SSH key: the installed system accepts no login (password logins are off); give the profile "
        "ssh_authorized_keys (--param) or playbooks (which add the controller's key)")]


def boot_warnings(kind: str, *, host: str, state: str, installs: bool) -> list[RenderWarning]:
    """A boot config preview of a host that would boot its disk now, not the installer."""
    if kind in KIND_FAMILIES or installs:
        return []
    return [RenderWarning(
        "local_boot",
        f"host {host} is {state}, not installing: this is its local-boot config; the installer's "
        f"is served only while it installs (prov host install {host})")]
