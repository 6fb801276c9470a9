from __future__ import annotations

import io
import json
import logging

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
