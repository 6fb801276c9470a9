"""Input rules shared by the API, the CLI's bulk import and GitOps inventories.

Each rule is a plain function that returns the normalised value or raises
``ValueError`` with a short reason (pydantic turns that into a 422 naming the
field), plus an ``Annotated`` type so request models can simply say ``Mac``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

# RFC 1123 section 2.1: a label is 1-63 letters, digits or hyphens and may start
# with a digit; it must not start or end with a hyphen. Host names in prov are
# single labels (the ``name`` column is 63 characters).
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Racks, profiles and roles: a slug; dots and underscores allowed ("ubuntu-22.04").
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# MAC forms accepted on input (IEEE 802 notations people actually paste):
# aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff (Cisco), aabbccddeeff.
_MAC_SEP = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_MAC_DOT = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")
_MAC_BARE = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(value: str) -> str:
    """Any common MAC notation -> lower-case colon form ``aa:bb:cc:dd:ee:ff``."""
    if not isinstance(value, str):
        raise ValueError("MAC address must be a string")
    v = value.strip().lower()
    if _MAC_SEP.match(v) or _MAC_DOT.match(v) or _MAC_BARE.match(v):
        hexdigits = re.sub(r"[^0-9a-f]", "", v)
        return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))
    raise ValueError(f"not a MAC address: {value!r} (expected aa:bb:cc:dd:ee:ff)")


def validate_hostname(value: str) -> str:
    """An RFC 1123 host name label, lower-cased. All-digit names are refused: they read as ids."""
    if not isinstance(value, str):
        raise ValueError("host name must be a string")
    v = value.strip().lower()
    if not _LABEL.match(v):
        raise ValueError(
            f"not a valid host name: {value!r} (RFC 1123: 1-63 letters, digits or '-', not starting or ending with '-')"
        )
    if v.isdigit():
        raise ValueError(f"host name {value!r} is all digits; it would be read as an id")
    return v


def validate_fqdn(value: str) -> str:
    """A DNS name made of RFC 1123 labels (at most 253 characters)."""
    v = value.strip().lower().rstrip(".")
    if not v or len(v) > 253 or not all(_LABEL.match(label) for label in v.split(".")):
        raise ValueError(f"not a valid DNS name: {value!r}")
    return v


def validate_slug(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    v = value.strip().lower()
    if not _SLUG.match(v) or v.isdigit():
        raise ValueError(f"not a valid name: {value!r} (1-63 of a-z 0-9 . _ -, starting with a letter or digit)")
    return v


def validate_ip(value: str) -> str:
    """An IPv4 or IPv6 address in canonical form."""
    try:
        return str(ipaddress.ip_address(value.strip() if isinstance(value, str) else value))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def validate_address(value: str) -> str:
    """A BMC or host address: an IP address or a DNS name."""
    if not isinstance(value, str):
        raise ValueError("address must be a string")
    try:
        return validate_ip(value)
    except ValueError:
        pass
    try:
        return validate_fqdn(value)
    except ValueError:
        raise ValueError(f"not an IP address or DNS name: {value!r}") from None


def validate_port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"not a TCP/UDP port: {value!r} (1-65535)")
    return value


def _strict_str(value: object) -> object:
    # Refuse numbers where names are expected ({"name": 5} is a client bug, not "5").
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


Mac = Annotated[str, BeforeValidator(_strict_str), AfterValidator(normalize_mac)]
Hostname = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_hostname)]
Slug = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_slug)]
IpAddress = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_ip)]
Address = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_address)]
Port = Annotated[int, AfterValidator(validate_port)]
