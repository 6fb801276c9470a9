"""One signed webhook POST to an address already checked (provisioner/webhook_policy.py).

The connection goes to ``ip`` itself, never to a fresh resolution of the host name (DNS
rebinding): the URL is rewritten to the address, ``Host`` carries the name, and for https the
TLS server name (SNI and certificate check) is the name too. Redirects are not followed (a 3xx
is a failure: a redirect could point anywhere). Every phase is bounded by ``timeout`` and the
whole exchange by twice that; the answer's body is read up to 4 KiB and dropped (a receiver's
reply never reaches a log or the delivery log).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import httpx

from provisioner import __version__
from provisioner.webhook_policy import IP, SIGNATURE_HEADER, Target, signature

_READ_MAX = 4096


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    duration_ms: int
    error: str  # "" when the receiver answered 2xx

    @property
    def ok(self) -> bool:
        return not self.error


def _netloc(ip: IP, port: int) -> str:
    return f"[{ip}]:{port}" if isinstance(ip, ipaddress.IPv6Address) else f"{ip}:{port}"


def _host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


def post(client: httpx.Client, target: Target, ip: IP, body: bytes, secret: str, *, event_id: int,
         event_kind: str, attempt: int, timeout: float) -> Outcome:
    """POST ``body`` (JSON) to ``target`` at ``ip``, signed with ``secret``; never raises."""
    t = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"prov-webhook/{__version__}",
        "Host": _host_header(target),
        SIGNATURE_HEADER: signature(secret, body, t),
        "X-Prov-Event-Id": str(event_id),
        "X-Prov-Event": event_kind,
        "X-Prov-Delivery-Attempt": str(attempt),
    }
    url = f"{target.scheme}://{_netloc(ip, target.port)}{target.path}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    start = time.monotonic()
    deadline = start + 2 * timeout
    status: int | None = None
    try:
        request = client.build_request("POST", url, content=body, headers=headers, extensions=extensions,
                                       timeout=httpx.Timeout(timeout))
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            status = response.status_code
            got = 0
            for chunk in response.iter_raw():
                got += len(chunk)
                if got >= _READ_MAX or time.monotonic() > deadline:
                    break
        finally:
            response.close()
    except httpx.TimeoutException:
        return Outcome(status, _ms(start), f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(status, _ms(start), _describe(exc))
    if 200 <= status < 300:
        return Outcome(status, _ms(start), "")
    return Outcome(status, _ms(start), f"receiver answered HTTP {status}")


def _ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def _describe(exc: httpx.HTTPError) -> str:
    # the exception's class, and its first cause's words without the URL (which names the address)
    cause = exc.__cause__ or exc.__context__
    words = str(cause or exc).split("\n")[0][:200]
    return f"{exc.__class__.__name__}: {words}" if words else exc.__class__.__name__
