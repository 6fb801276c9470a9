"""Webhook URLs, where a delivery may go, and its signature (issue 16, item 2).

Used when a subscription is saved (the API: 422 naming ``url``) and again by the deliverer
right before every POST (provisioner/conductor/webhooks.py), because a name that resolved to
a public address when it was saved may resolve to 127.0.0.1 or 169.254.169.254 later (DNS
rebinding): the deliverer resolves once, checks every address, and connects to the address it
checked (drivers/notify/webhook.py), never resolving again.

Refused unless ``settings.webhook_allowed_destinations`` names them: loopback, link-local
(169.254.0.0/16 and fe80::/10, where cloud metadata services answer), unspecified, multicast
and reserved addresses, and the addresses of the machine this runs on (the controller itself).
A non-empty ``webhook_allowed_destinations`` is an allow list: only the CIDRs and host names it
lists are reachable, and listing one of the refused classes allows it.

Signature: ``X-Prov-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``;
a receiver recomputes it and refuses a ``t`` older than ``REPLAY_WINDOW_S`` (verify()).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from provisioner.errors import InvalidInput
from provisioner.settings import Settings

SIGNATURE_HEADER = "X-Prov-Signature"
REPLAY_WINDOW_S = 300  # a receiver refuses a signature whose t is further than this from its clock
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_OWN_TTL_S = 30.0
_own_lock = threading.Lock()
_own_cache: tuple[float, frozenset[IP]] = (-_OWN_TTL_S, frozenset())


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: scheme, host as written, port, and the path with its query."""

    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str, field: str = "url") -> Target:
    """http(s) only, a host, no user or password in it, no fragment; else 422 naming ``field``."""
    if len(url) > 2048:
        raise InvalidInput(field=field, reason="is longer than 2048 characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput(field=field, reason="must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(field=field, reason=f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInput(field=field, reason="must be an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidInput(field=field, reason="names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(field=field, reason="must not carry a user or password (deliveries are signed instead)")
    if parts.fragment:
        raise InvalidInput(field=field, reason="must not have a #fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), path)


def _ipv4_addresses() -> set[IP]:
    out: set[IP] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _idx, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            out.add(ipaddress.IPv4Address(packed[20:24]))
    return out


def _ipv6_addresses() -> set[IP]:
    out: set[IP] = set()
    try:
        with open("/proc/net/if_inet6") as fh:
            for line in fh:
                out.add(ipaddress.IPv6Address(int(line.split()[0], 16)))
    except OSError:
        pass
    return out


def own_addresses() -> frozenset[IP]:
    """Every address of this machine's interfaces and of its host name (cached for 30 s)."""
    global _own_cache
    with _own_lock:
        at, cached = _own_cache
        if time.monotonic() - at < _OWN_TTL_S:
            return cached
    found: set[IP] = set()
    with contextlib.suppress(OSError):
        found |= _ipv4_addresses()
    found |= _ipv6_addresses()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    except (OSError, ValueError):
        pass
    result = frozenset(found)
    with _own_lock:
        _own_cache = (time.monotonic(), result)
    return result


def _plain(ip: IP) -> IP:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip


def refusal(ip: IP, host: str, settings: Settings) -> str | None:
    """Why a delivery to ``ip`` (resolved from ``host``) is refused, or None when it may go."""
    ip = _plain(ip)
    allowed = settings.webhook_allowed_destinations
    if allowed:
        for entry in allowed:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return None
            except ValueError:
                if entry.lower().rstrip(".") == host.rstrip("."):
                    return None
        return f"destination {ip} is not in webhook_allowed_destinations"
    if ip.is_loopback:
        what = "a loopback address"
    elif any(ip in net for net in _LINK_LOCAL) or ip.is_link_local:
        what = "a link-local address (metadata services)"
    elif ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        what = "not a unicast address"
    elif ip in own_addresses():
        what = "an address of this controller"
    else:
        return None
    return f"destination {ip} is {what}; refused unless webhook_allowed_destinations lists it"


def resolve(host: str, port: int) -> list[IP]:
    """The addresses of ``host`` (an IP literal is itself), in the resolver's order."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))


def checked_addresses(target: Target, settings: Settings, field: str = "url") -> list[IP]:
    """Resolve ``target.host`` now and check every address (all must be allowed: a name with one
    public and one metadata address is refused). 422 naming ``field`` otherwise."""
    try:
        addresses = resolve(target.host, target.port)
    except (OSError, UnicodeError):
        raise InvalidInput(field=field, reason=f"host {target.host} does not resolve") from None
    if not addresses:
        raise InvalidInput(field=field, reason=f"host {target.host} does not resolve")
    for ip in addresses:
        why = refusal(ip, target.host, settings)
        if why is not None:
            raise InvalidInput(field=field, reason=why)
    return addresses


def check_url(url: str, settings: Settings, field: str = "url") -> Target:
    """A subscription's URL, as saved: parsed and its destination allowed (422 naming ``field``)."""
    target = parse_url(url, field)
    checked_addresses(target, settings, field)
    return target


# --------------------------------------------------------------------------- signature
def signature(secret: str, body: bytes, t: int) -> str:
    """The ``X-Prov-Signature`` header value for ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           window: float = REPLAY_WINDOW_S) -> bool:
    """What a receiver does: the HMAC matches and ``t`` is within ``window`` seconds of now."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > window:
        return False
    want = signature(secret, body, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(want, v) for k, v in _pairs(header) if k == "v1")


def _pairs(header: str) -> Iterable[tuple[str, str]]:
    for part in header.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            yield k.strip(), v.strip()
