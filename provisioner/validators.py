"""Input rules shared by the API, the CLI's bulk import and GitOps inventories.

Each rule is a plain function that returns the normalised value or raises
``ValueError`` with a short reason (pydantic turns that into a 422 naming the
field), plus an ``Annotated`` type so request models can simply say ``Mac``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Any

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
# A NIC's name as the OS knows it (eth0, enp3s0f1, bond0.100, eno1:1); empty: unnamed.
_NIC_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,31})?$")
# Template and playbook names (the template catalogue's rule: case kept, no path separators).
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

# --------------------------------------------------------------------------- text hygiene
# What no text prov stores may hold: C0 controls but tab, line feed and carriage return (NUL
# truncates in C libraries, ESC drives the terminal that shows the value), DEL, C1 controls,
# the bidirectional embedding/override/isolate controls that make text read differently from
# what it is ("Trojan Source", CVE-2021-42574) and lone UTF-16 surrogates (JSON lets "\ud800"
# through; no database can store it). Single-line fields also refuse line breaks.
_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_REFUSED_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT_NAMES = {0x00: "NUL", 0x09: "TAB", 0x0A: "LINE FEED", 0x0D: "CARRIAGE RETURN", 0x1B: "ESC", 0x7F: "DEL"}


def describe_char(ch: str) -> str:
    """``U+001B (ESC)``: how an error names a refused character, never the character itself."""
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        return f"U+{code:04X} (lone surrogate)"
    return f"U+{code:04X} ({_SHORT_NAMES.get(code) or unicodedata.name(ch, 'control character')})"


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` may not be stored (the first refused character, by code point and position), or None."""
    m = (_REFUSED if multiline else _REFUSED_LINE).search(value)
    if m is None:
        return None
    code = ord(m.group())
    if m.group() in "\n\r\u2028\u2029":
        kind = "a line break (one line expected)"
    elif 0x202A <= code <= 0x2069:
        kind = "a bidirectional control character"
    elif 0xD800 <= code <= 0xDFFF:
        kind = "not a character"
    else:
        kind = "a control character"
    return f"contains {describe_char(m.group())}, {kind}, at character {m.start() + 1}"


def check_line(value: Any) -> Any:
    """One line of text: none of the refused characters and no line break (lists: each item)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str) and (problem := text_problem(item)):
            raise ValueError(problem)
    return value


def check_text(value: Any) -> Any:
    """Free text that may span lines: none of the refused characters."""
    if isinstance(value, str) and (problem := text_problem(value, multiline=True)):
        raise ValueError(problem)
    return value


def one_line(cls: Any, value: Any) -> Any:
    """``field_validator("site", ...)(one_line)``: request bodies check their single-line fields
    with it (responses do not, so a value stored before this rule cannot fail a read)."""
    return check_line(value)


def file_names(cls: Any, value: Any) -> Any:
    """``field_validator("template", "playbooks")(file_names)``: a name or a list of names."""
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                validate_file_name(check_line(item))
            except ValueError as exc:
                raise ValueError(f"item {i + 1}: {exc}" if isinstance(value, list) else str(exc)) from None
    return value


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


def validate_nic_name(value: str) -> str:
    if not _NIC_NAME.match(value):
        raise ValueError("not a NIC name (1-32 of A-Z a-z 0-9 . _ : -, starting with a letter or digit, or empty)")
    return value


def validate_file_name(value: str) -> str:
    """A template or playbook name: 1-63 of A-Z a-z 0-9 . _ -, no path separators ('' allowed: the default)."""
    if value and not _FILE_NAME.match(value):
        raise ValueError("not a valid name (1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit)")
    return value


# A disk image's checksum as profiles name it: the deploy agent verifies sha256 (drivers/deploy),
# sha512 is accepted for images checked elsewhere. Hex digits of the digest's full length: a
# truncated or placeholder digest ("sha256:...") is refused when typed, not at install time.
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def validate_checksum(value: str) -> str:
    """``sha256:<64 hex digits>``, ``sha512:<128 hex digits>`` or '' (none); a readable reason otherwise.

    Outer blanks are allowed (request models strip them); the algorithm is lower case, as the
    schema's pattern has always required."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    v = value.strip()
    if not v:
        return v
    algo, sep, digest = v.partition(":")
    want = _DIGEST_HEX.get(algo) if sep else None
    if want is None or len(digest) != want or not _HEX.match(digest):
        shown = v if len(v) <= 80 else v[:77] + "..."
        raise ValueError(f"not a checksum: {shown!r} (expected sha256:<64 hex digits> or sha512:<128 hex digits>)")
    return value  # as given: GitOps compares it with the inventory's text


def checksum(cls: Any, value: Any) -> Any:
    """``field_validator("image_checksum", mode="before")(checksum)``: request bodies check it before
    the schema's pattern would answer with the bare regular expression."""
    if value is None:
        return value
    return validate_checksum(check_line(value))


def validate_port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"not a TCP/UDP port: {value!r} (1-65535)")
    return value


def _strict_str(value: object) -> object:
    # Refuse numbers where names are expected ({"name": 5} is a client bug, not "5"), and
    # name a refused character by its code point before a pattern would echo the value (outer
    # blanks are stripped by the models, so a pasted trailing newline is no error).
    if not isinstance(value, str):
        raise ValueError("must be a string")
    check_line(value.strip(" \t\r\n"))
    return value


def _strict_int(value: object) -> object:
    # "623" and true are not ports: JSON has numbers (a CSV importer converts its cells first).
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


Mac = Annotated[str, BeforeValidator(_strict_str), AfterValidator(normalize_mac)]
Hostname = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_hostname)]
Slug = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_slug)]
IpAddress = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_ip)]
Address = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_address)]
Port = Annotated[int, BeforeValidator(_strict_int), AfterValidator(validate_port)]
NicName = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_nic_name)]
FileName = Annotated[str, BeforeValidator(_strict_str), AfterValidator(validate_file_name)]
