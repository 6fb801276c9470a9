"""Structured logs: one JSON object per line, host and task named, secrets masked.

Callers name the host and task with ``extra={"host": name, "task": task_id}``;
the formatter lifts those into top-level keys so ``jq 'select(.host=="web01")'``
finds every line about a host. Every handler carries secret_store.MaskingFilter, so
a password registered with secret_store.register() never reaches a log line.
A line written while the API serves a request (the access line included) names the
request's id (``request_id``, set by api/request_id.py): the X-Request-ID the client sent or got.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from provisioner.secret_store import MaskingFilter, mask

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName", "color_message",  # uvicorn adds an ANSI-coloured copy
}


# The id of the API request being served in this context (threads the request runs work in
# inherit it); None outside a request.
request_id: ContextVar[str | None] = ContextVar("prov_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record written while a request is served (unless the caller named one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key in _STD or key.startswith("_"):
                continue
            out[key] = value if isinstance(value, int | float | bool) or value is None else mask(str(value))
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info))
        elif record.exc_text:  # formatted by the caller (background logging)
            out["exc"] = mask(record.exc_text)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)  # before a traceback, which format() appends
        rid = getattr(record, "request_id", None)
        return f"{line} [request_id={rid}]" if rid else line

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class _Handoff(logging.handlers.QueueHandler):
    """The caller's half of a background handler: the message is merged (its arguments may
    change later) and a traceback formatted here; formatting, masking and writing happen on
    the writer thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None  # the frames stay with the caller
        return record


_TRACEBACKS = logging.Formatter()
_listener: logging.handlers.QueueListener | None = None


@atexit.register
def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()  # writes what is queued, then ends the thread
        _listener = None


def setup_logging(level: str = "INFO", json_lines: bool = True, stream: TextIO | None = None, *,
                  background: bool = False) -> logging.Handler:
    """Install the one root handler (idempotent: a previous prov handler is replaced).

    ``background`` (``prov serve``): log calls only queue the record, and one writer thread
    formats, masks and writes it. A write is a system call that gives up the GIL, and taking it
    back meant waiting for whichever route or TFTP thread got it: on the event loop thread, every
    access line stalled every connection behind it (issue 18: /healthz p99 under bench/abuse).
    A sink that blocks (a full pipe, a stalled journald) stalls only the writer thread. The
    queue is unbounded: the lines are small, and dropping one could hide what went wrong;
    whatever is queued is written at exit.
    """
    global _listener
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_prov", False):
            root.removeHandler(h)
    _stop_listener()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(MaskingFilter())
    installed: logging.Handler = handler
    if background:
        installed = _Handoff(queue.SimpleQueue())
        _listener = logging.handlers.QueueListener(installed.queue, handler, respect_handler_level=True)
        _listener.start()
    # In the caller's thread: the request id is a context variable of the request being served.
    installed.addFilter(RequestIdFilter())
    installed._prov = True  # type: ignore[attr-defined]
    root.addHandler(installed)
    root.setLevel(level.upper())
    # uvicorn's loggers propagate to the root so their lines are JSON and masked too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    return installed
