"""prov serve's logging: the caller only queues a record, a writer thread formats, masks and writes it.

A write gives up the GIL, and on the event loop thread taking it back meant queueing behind the
route and TFTP threads (issue 18, /healthz under bench/abuse). The lines must be what the
synchronous handler writes: masked, the request id of the caller's context, tracebacks, every
line written by exit.
"""

from __future__ import annotations

import io
import json
import logging
import threading

from provisioner import logs, secret_store
from provisioner.logs import setup_logging


def _run(json_lines: bool) -> tuple[str, int]:
    buf = io.StringIO()
    handler = setup_logging("INFO", json_lines, stream=buf, background=True)
    writer = logs._listener
    assert writer is not None and writer._thread is not None  # a writer thread runs
    writer_ident = writer._thread.ident
    try:
        secret_store.register("Queued-Secret-99")
        log = logging.getLogger("provisioner.test")
        args = ["Queued-Secret-99"]
        token = logs.request_id.set("rid-42")
        try:
            log.info("connecting with %s", args, extra={"host": "web01"})
        finally:
            logs.request_id.reset(token)
        args.append("changed-later")  # merged when queued, not when written
        try:
            raise RuntimeError("boom Queued-Secret-99")
        except RuntimeError:
            log.exception("failed")
        seen: list[int | None] = []

        class Spy(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                seen.append(threading.get_ident())
                return True

        writer.handlers[0].addFilter(Spy())
        log.warning("written on the writer thread")
    finally:
        logging.getLogger().removeHandler(handler)
        logs._stop_listener()  # as at exit: whatever is queued is written
    assert seen and set(seen) == {writer_ident}
    return buf.getvalue(), len(seen)


def test_json_lines_from_the_writer_thread() -> None:
    out, _ = _run(True)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert first["host"] == "web01" and first["request_id"] == "rid-42" and "changed-later" not in first["msg"]
    assert secret_store.MASK in first["msg"] and "Queued-Secret-99" not in out
    assert "RuntimeError: boom" in second["exc"] and "request_id" not in second
    assert third["msg"] == "written on the writer thread"


def test_text_lines_from_the_writer_thread() -> None:
    out, _ = _run(False)
    assert "Queued-Secret-99" not in out and secret_store.MASK in out
    assert "[request_id=rid-42]" in out.splitlines()[0]
    assert "Traceback (most recent call last)" in out and "RuntimeError: boom" in out


def test_setting_up_again_replaces_the_writer() -> None:
    first = setup_logging("INFO", True, stream=io.StringIO(), background=True)
    writer = logs._listener
    second = setup_logging("INFO", True, stream=io.StringIO())
    try:
        assert logs._listener is None and writer is not None and writer._thread is None  # stopped
        assert first not in logging.getLogger().handlers and second in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(second)
