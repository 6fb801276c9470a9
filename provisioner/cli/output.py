"""How every CLI command prints results and errors.

``--output table|json|yaml``; errors become one readable line on stderr and the
exit code of the error class (errors.ProvError.exit_code). Nothing a user can
trigger (a dead controller, a missing file, bad input, Ctrl-C) ends in a
traceback; ``PROV_DEBUG=1`` re-raises unexpected exceptions for developers.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from provisioner.client import ProvClient
from provisioner.errors import ProvError

F = TypeVar("F", bound=Callable[..., Any])

# Rich follows sys.stdout/sys.stderr at print time, so CliRunner captures work.
# Off a terminal rich assumes 80 columns and would cut cells; pipes get a wide table.
_PIPE_WIDTH = 200
console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err_console = Console(stderr=True, soft_wrap=True)

# Shell convention for "terminated by SIGINT" (128 + 2).
EXIT_INTERRUPTED = 130


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = typer.Option(OutputFormat.table, "--output", "-o", help="table, json or yaml")


def client() -> ProvClient:
    return ProvClient()


def _one_line(message: str) -> str:
    # A server or peer message may carry newlines; the contract is one line. Secrets the
    # command read (BMC passwords, tokens) are registered with secret_store.register and masked.
    from provisioner.secret_store import mask  # imported on the error path only: it loads the settings stack

    return mask(" ".join(str(message).split())) or "unknown error"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Decorator: ProvError -> one line on stderr + the class's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProvError as exc:
            raise fail(exc.message, exc.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own control flow and usage errors (typer.BadParameter...)
        except KeyboardInterrupt:
            raise fail("interrupted", EXIT_INTERRUPTED) from None
        except OSError as exc:  # a file the user named, a broken pipe...
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise fail(f"{where}{exc.strerror or exc}", 1) from None
        except Exception as exc:
            if os.environ.get("PROV_DEBUG") == "1":
                raise
            raise fail(f"unexpected {exc.__class__.__name__}: {exc}", 1) from None

    return wrapper  # type: ignore[return-value]


def items(resp: Any) -> list[dict[str, Any]]:
    """The rows of a list response: ``{"data": [...], "count": N}`` or a bare list."""
    if isinstance(resp, dict) and isinstance(resp.get("data"), list):
        return list(resp["data"])
    if isinstance(resp, list):
        return resp
    return []


def jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def emit(data: Any, fmt: OutputFormat, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print ``data`` (a dict or a list of dicts) in the chosen format.

    ``columns`` picks and orders table columns (dotted paths reach into nested
    dicts, e.g. ``bmc.address``); json and yaml always print everything.
    """
    if fmt == OutputFormat.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if fmt == OutputFormat.yaml:
        sys.stdout.write(yaml.safe_dump(jsonable(data), sort_keys=False))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        console.print("(none)")
        return
    if isinstance(data, dict) and columns is None:
        table = Table(show_header=False, title=title)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for k, v in data.items():
            table.add_row(str(k), _cell(v))
        console.print(table)
        return
    cols = list(columns or rows[0].keys())
    table = Table(title=title)
    for c in cols:
        table.add_column(c.split(".")[-1], overflow="fold")
    for row in rows:
        table.add_row(*[_cell(_pick(row, c)) for c in cols])
    console.print(table)


def _pick(row: Any, path: str) -> Any:
    cur = row
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(_cell(x) if isinstance(x, dict | list) else str(x) for x in v) or "-"
    if isinstance(v, dict):
        return " ".join(f"{k}={_cell(x)}" for k, x in v.items()) or "-"
    return str(v)
