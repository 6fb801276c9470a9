"""Rendering console pages: one autoescaping Jinja2 environment, security headers, the session gate.

This is a normal HTML environment (autoescape on for every template), not the install-template
sandbox of provisioner/render_sandbox.py: console templates are ours, the values they show (host
names, history messages, inventory strings) are the operators' and are always escaped.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from provisioner import __version__, states
from provisioner.api.ui import session as ui_session
from provisioner.api.ui.session import UiSession
from provisioner.settings import Settings

TEMPLATES = Path(__file__).parent / "templates"
ASSETS = Path(__file__).parent / "assets"
FLASH_COOKIE = "prov_flash"

# Defence in depth behind the escaping: no inline script or style runs, nothing is loaded from
# another origin, no page frames the console (clickjacking), forms post only to us.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
                                "object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.globals.update(version=__version__, transient=sorted(states.TRANSIENT))


def headers(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def render(request: Request, name: str, status: int = 200, sess: UiSession | None = None, **ctx: Any) -> Response:
    flash = _take_flash(request)
    ctx.setdefault("stream_filter", None)  # None: the page follows no events
    ctx.setdefault("stream_after", 0)
    html = env.get_template(name).render(request=request, sess=sess, flash=flash, path=request.url.path, **ctx)
    response = headers(HTMLResponse(html, status_code=status))
    if flash is not None:
        ui_session.clear_cookie(response, request, FLASH_COOKIE)
    return response


def fragment(name: str, **ctx: Any) -> Response:
    return headers(HTMLResponse(env.get_template(name).render(**ctx)))


def redirect(url: str) -> Response:
    return headers(RedirectResponse(url, status_code=303))


def flash(response: Response, request: Request, ok: bool, message: str) -> Response:
    """A one-line result shown on the next page (a cookie: nothing an outside link can forge)."""
    value = base64.urlsafe_b64encode(json.dumps({"ok": ok, "m": message[:500]}).encode()).decode()
    ui_session.set_cookie(response, request, FLASH_COOKIE, value, max_age=60)
    return response


def _take_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return {"ok": bool(data["ok"]), "message": str(data["m"])}
    except (ValueError, KeyError, TypeError):
        return None


def require(request: Request, settings: Settings) -> UiSession:
    """The session, else a 303 to the login page (app.py's HTTP error handler keeps the Location)."""
    sess = ui_session.current(request, settings)
    if sess is None:
        raise StarletteHTTPException(status_code=303, detail="log in first",
                                     headers={"Location": "/ui/login", **SECURITY_HEADERS})
    return sess


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the first value of each field)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
