"""The ``install`` part of every installer's context: a profile's params with per-family defaults, checked.

The install files are line-oriented (preseed lines, kickstart commands, a
kernel command line): a newline or space in a parameter would inject another
directive, so every parameter is checked against a narrow pattern before any
template sees it. Plain values in, plain values out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from provisioner.errors import InvalidInput

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


def param(params: Mapping[str, Any], key: str, default: str) -> str:
    """One scalar parameter (or ``default``), checked against its rule; InvalidInput names it."""
    value = params.get(key, default)
    value = default if value is None else str(value)
    rule = _PARAM_RULES.get(key)
    if rule is not None and not rule.match(value):
        raise InvalidInput(field=f"profile.params.{key}", reason=f"invalid value {value!r}")
    return value


def _str_list(params: Mapping[str, Any], key: str, rule: re.Pattern[str]) -> list[str]:
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


def install_params(os_family: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``install`` context of a profile of ``os_family`` with ``params`` (its JSON params)."""
    p = dict(params or {})
    fam = _FAMILY_DEFAULTS.get(os_family, _FAMILY_DEFAULTS["debian"])
    mirror = param(p, "mirror", fam["mirror"])
    parts = urlsplit(mirror)
    return {
        "admin_user": param(p, "admin_user", "prov"),
        "ssh_authorized_keys": _str_list(p, "ssh_authorized_keys", _SSH_KEY_RE),
        "timezone": param(p, "timezone", "UTC"),
        "locale": param(p, "locale", "en_US.UTF-8"),
        "keyboard": param(p, "keyboard", "us"),
        "mirror": mirror,
        # Debian's installer wants the mirror split into protocol, host and directory.
        "mirror_scheme": parts.scheme,
        "mirror_host": parts.netloc,
        "mirror_dir": parts.path or "/",
        "proxy": param(p, "proxy", ""),
        "disk": param(p, "disk", ""),
        "release": param(p, "release", fam["release"]),
        "packages": _str_list(p, "packages", _PACKAGE_RE),
    }
