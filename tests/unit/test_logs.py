from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from provisioner import secret_store
from provisioner.logs import setup_logging


def test_json_lines_host_task_and_masking() -> None:
    buf = io.StringIO()
    handler = setup_logging("INFO", True, stream=buf)
    try:
        secret_store.register("TopSecret-42")
        log = logging.getLogger("provisioner.test")
        log.info("connecting with password %s", "TopSecret-42", extra={"host": "web01", "task": 7})
        log.warning("plain line\nwith newline")
        try:
            raise RuntimeError("boom TopSecret-42")
        except RuntimeError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # one line per event, even with newlines and tracebacks
    first = json.loads(lines[0])
    assert first["host"] == "web01" and first["task"] == 7 and first["level"] == "info"
    assert "TopSecret-42" not in buf.getvalue() and secret_store.MASK in first["msg"]
    third = json.loads(lines[2])
    assert "RuntimeError" in third["exc"] and "TopSecret" not in third["exc"]


def test_text_mode_masks_too() -> None:
    buf = io.StringIO()
    handler = setup_logging("INFO", False, stream=buf)
    try:
        secret_store.register("AnotherSecret-7")
        logging.getLogger("provisioner.test").info("pw=%s", "AnotherSecret-7")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "AnotherSecret-7" not in buf.getvalue() and secret_store.MASK in buf.getvalue()


def test_install_tokens_are_masked_by_shape() -> None:
    from provisioner.secret_store import mask

    line = '127.0.0.1:5000 - "GET /install/v1/Zr3_kq9-T0ken0000000/config HTTP/1.1" 200'
    assert "Zr3_kq9" not in mask(line) and "/install/v1/********/config" in mask(line)
    assert mask("append prov.token=abcdefghijkl prov.url=http://x") == "append prov.token=******** prov.url=http://x"


@pytest.mark.parametrize("json_lines", [True, False])
def test_uvicorn_access_log_never_carries_a_real_install_token(tmp_path: Path, json_lines: bool) -> None:
    """A real uvicorn access log (as ``prov serve`` configures it) of real install-route requests with
    a really minted ``<id>.<secret>`` token: the secret never appears (issue 18: the old masker
    stopped at the dot, so every access-log line of an install route carried a live credential)."""
    import threading
    import time

    import httpx
    import uvicorn
    from sqlmodel import Session, SQLModel

    from provisioner import states as S
    from provisioner.api.app import create_app
    from provisioner.conductor import install_tokens
    from provisioner.db import get_engine
    from tests.support.helpers import free_port
    from tests.support.install import add_host, make_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path / "data", host="127.0.0.1", port=port, public_url=url)
    settings.ensure_dirs()
    SQLModel.metadata.create_all(get_engine(settings))
    with Session(get_engine(settings), expire_on_commit=False) as db:
        host = add_host(db, method="autoinstall", state=S.INSTALLING, mac="52:54:00:77:00:01")
        token = install_tokens.mint(db, host, settings)
    secret = token.split(".", 1)[1]
    assert len(secret) >= 40 and str(host.id) == token.split(".", 1)[0]

    buf = io.StringIO()
    handler = setup_logging("INFO", json_lines, stream=buf)
    app = create_app(settings)
    app.state.start_services = False
    # log_config=None and access_log=True: what prov serve runs (provisioner/server.py)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=True,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=url, timeout=10) as h:
            for path in ("config", "user-data", "meta-data", "vendor-data"):
                h.get(f"/install/v1/{token}/{path}")
            h.get(f"/install/v1/{token}/report", params={"event": "progress", "progress": 10})
            h.post(f"/install/v1/{token}/events", json={"event": "progress", "message": "x"})
            h.get("/boot/files/nothing-here", params={"token": token})
            script = h.get("/boot/ipxe/52:54:00:77:00:01").text  # mints the boot's token: kernel args, URLs
        boot_token = next(w.split("=", 1)[1] for w in script.split() if w.startswith("prov.token="))
        logging.getLogger("provisioner.test").info("boot script sent:\n%s", script)
        logging.getLogger("provisioner.test").warning(
            "request headers: %s", {"authorization": f"Bearer {token}", "x-install-token": token})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger().removeHandler(handler)
    out = buf.getvalue()
    access = [ln for ln in out.splitlines() if "/install/v1/" in ln and "HTTP/1.1" in ln]
    assert len(access) >= 6, out[-2000:]  # the access log really was written, through our handler
    for credential in (secret, boot_token.split(".", 1)[1]):
        assert credential not in out
        assert credential[:12] not in out  # not even a prefix of the secret part
    assert f"/install/v1/{secret_store.MASK}/config" in out
    assert f"prov.token={secret_store.MASK}" in out and f"token={secret_store.MASK}" in out


def test_unregistered_tokens_are_masked_wherever_they_travel() -> None:
    """The shape and carrier rules alone (no token registered with the masker): a real
    ``<id>.<secret>`` token in every place it travels."""
    import secrets

    from provisioner.secret_store import MASK, mask

    for host_id in (7, 123456, 2147483647):
        secret = secrets.token_urlsafe(32)
        token = f"{host_id}.{secret}"
        lines = [
            f'127.0.0.1:40000 - "GET /install/v1/{token}/config HTTP/1.1" 200',
            f'127.0.0.1:40000 - "GET /install/v1/{token}/report?event=done HTTP/1.1" 200',
            f"kernel /boot/files/linux ds=nocloud-net;s=http://c:8700/install/v1/{token}/ prov.token={token} quiet",
            f'"GET /boot/files/x?token={token}&y=1 HTTP/1.1" 404',
            f"headers: {{'authorization': 'Bearer {token}'}}",
            f"Authorization: Basic {secret}",
            f"request for {token} failed",  # bare, in any text
            f"see %2Finstall%2Fv1%2F{token}%2Fconfig",
        ]
        for line in lines:
            masked = mask(line)
            assert secret not in masked and secret[:8] not in masked, (line, masked)
            assert MASK in masked
    plain = "took 1.25 s; version 22.04; host web01.example.org"
    assert mask(plain) == plain
