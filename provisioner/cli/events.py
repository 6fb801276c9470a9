"""``prov events [--follow]`` and ``prov host watch NAME``: the event stream (GET /api/v1/events/stream).

A dropped connection is resumed with ``Last-Event-ID`` (the stream sends exactly what was missed),
so ``--follow`` survives a controller restart. Ctrl-C ends either command cleanly (exit 130).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from provisioner import states as S
from provisioner.cli import exitcodes
from provisioner.cli.groups import app, host_app
from provisioner.cli.output import client, fail, handle_errors

STREAM = "/api/v1/events/stream"
# The server sends a heartbeat every 15 s: three missed ones mean the connection is dead.
READ_TIMEOUT_S = 45.0
# Without --follow: the retained events come in one burst; this much silence means "caught up".
IDLE_S = 1.5
RECONNECT_S = 1.0


def _events(params: dict[str, Any], after: int | None, *, follow: bool,
            on_open: Callable[[], None] | None = None, deadline: float | None = None) -> Iterator[dict[str, Any]]:
    """The stream's events as dicts; reconnects (resuming after the last id) while ``follow``.

    ``deadline`` (time.monotonic()): past it, exit 9 (TIMEOUT)."""
    import httpx

    from provisioner.client import ControllerUnreachable

    last = after
    opened = False
    with client() as c:
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            read = READ_TIMEOUT_S if follow else IDLE_S
            if deadline is not None:
                read = max(0.05, min(read, deadline - time.monotonic()))
            timeout = httpx.Timeout(10.0, read=read)
            try:
                with c._http.stream("GET", STREAM, params=params, headers=headers, timeout=timeout) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise c._error(resp)
                    if not opened and on_open is not None:
                        on_open()
                    opened = True
                    data: list[str] = []
                    for line in resp.iter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
                        elif not line and data:
                            ev = json.loads("\n".join(data))
                            data = []
                            last = int(ev["id"])
                            yield ev
            except httpx.ReadTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise fail("gave up waiting (--timeout)", exitcodes.TIMEOUT) from None
                if not follow:
                    return  # caught up
            except httpx.HTTPError as exc:
                if not opened:
                    raise ControllerUnreachable(f"cannot reach the controller at {c.url}: {exc}") from None
            if not follow:
                return
            time.sleep(RECONNECT_S)  # the controller went away: resume from ``last``


def _line(ev: dict[str, Any]) -> str:
    parts = [ev.get("at", ""), f"#{ev['id']}", ev.get("kind", "")]
    if ev.get("host"):
        parts.append(ev["host"])
    elif ev.get("rack"):
        parts.append(f"rack:{ev['rack']}")
    if ev.get("task") is not None:
        parts.append(f"task:{ev['task']}")
    if ev.get("state"):
        parts.append(ev["state"])
    if ev.get("progress") is not None and ev.get("kind") == "task.progress":
        parts.append(f"{ev['progress']}%")
    text = " ".join(str(ev.get("message", "")).split())
    return "  ".join(str(p) for p in parts) + (f"  {text}" if text else "")


def _print(ev: dict[str, Any], as_json: bool) -> None:
    sys.stdout.write((json.dumps(ev, separators=(",", ":")) if as_json else _line(ev)) + "\n")
    sys.stdout.flush()


def _params(host: list[str] | None, rack: list[str] | None, kind: list[str] | None) -> dict[str, Any]:
    return {k: v for k, v in (("host", host), ("rack", rack), ("kind", kind)) if v}


@app.command("events")
@handle_errors
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming new events until Ctrl-C")] = False,
    host: Annotated[list[str] | None, typer.Option("--host", help="only this host (repeatable)")] = None,
    rack: Annotated[list[str] | None, typer.Option("--rack", help="only hosts of this rack (repeatable)")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help="host.state, host.history, host.power, task.progress, inventory, drift, or host")] = None,
    after: Annotated[int | None, typer.Option("--after", min=0, help="start after this event id (default: "
                                                                      "with --follow now, else 0)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Print events: the retained ones after --after, or with --follow everything from now on."""
    start = after if after is not None else (None if follow else 0)
    for ev in _events(_params(host, rack, kind), start, follow=follow):
        if ev.get("kind") == "stream.lost":
            sys.stderr.write(f"warning: {ev.get('message')}\n")
        _print(ev, as_json)


@host_app.command("watch")
@handle_errors
def watch(
    name: Annotated[str, typer.Argument(help="host name")],
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="give up after this many seconds "
                                                                          "(exit 9)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="events as one JSON object per line")] = False,
) -> None:
    """Follow one host's events until it is in a stable state (exit 0) or a failed one (exit 1).

    Already stable or failed: says so and exits at once."""
    def done(st: str) -> None:
        if st in S.FAILED:
            raise fail(f"{name} is {st}", exitcodes.ERROR)
        if st in S.STABLE:
            raise typer.Exit(exitcodes.OK)

    def current() -> None:  # once the stream is open: nothing between this read and the stream is lost
        with client() as c:
            now = str(c.get(f"/api/v1/hosts/{name}").get("state", ""))
        typer.echo(f"{name}: {now}", err=as_json)
        done(now)

    deadline = None if timeout is None else time.monotonic() + timeout
    for ev in _events({"host": [name]}, None, follow=True, on_open=current, deadline=deadline):
        _print(ev, as_json)
        if ev.get("kind") == "host.state" and ev.get("state"):
            done(str(ev["state"]))
