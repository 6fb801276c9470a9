"""Public iPXE endpoints: the first-stage chain script and the per-MAC boot script.

No operator token: firmware cannot send one. What a MAC gets is decided by
conductor.netboot (install only with netboot on and the host in an install
state; local boot otherwise; unknown MACs nothing or discovery).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.api.ratelimit import RESPONSE, limit
from provisioner.conductor import netboot
from provisioner.errors import InvalidInput, NotFound
from provisioner.validators import normalize_mac

PUBLIC = True
# Rate-limited per source address (api/ratelimit.py): each fetch of an installing host's script
# reads the database and writes a history line.
router = APIRouter(prefix="/boot", tags=["boot"], dependencies=[Depends(limit("boot"))], responses=RESPONSE)

# Boot scripts hold one-time tokens and change with the host's state: never cache.
_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/boot.ipxe", response_class=PlainTextResponse)
def boot_ipxe(settings: SettingsDep, request: Request) -> PlainTextResponse:
    settings = netboot.settings_for_request(settings, str(request.base_url))
    return PlainTextResponse(netboot.first_stage_script(settings), headers=_NO_STORE)


@router.get("/ipxe/{mac}", response_class=PlainTextResponse,
            responses={404: {"description": "unknown MAC (unknown_mac_action=ignore)"},
                       422: {"description": "not a MAC address"}})
def host_ipxe(mac: str, session: SessionDep, settings: SettingsDep, request: Request) -> PlainTextResponse:
    # Public route: its errors never echo the MAC it was given, even a valid one (a reply that
    # echoed input was an oracle for stored BMC passwords, issue 18; api/error_text.py).
    try:
        mac = normalize_mac(mac)
    except ValueError:
        raise InvalidInput(field="mac", reason="not a MAC address (expected aa:bb:cc:dd:ee:ff)") from None
    settings = netboot.settings_for_request(settings, str(request.base_url))
    text = netboot.boot_config_for_mac(session, mac, "ipxe", settings,
                                       source=request.client.host if request.client else None)
    if text is None:
        raise NotFound("no boot script for this MAC address", kind="boot script for MAC")
    return PlainTextResponse(text, headers=_NO_STORE)
