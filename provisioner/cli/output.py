"""How every CLI command prints results, asks before destroying, and fails.

``-o table|wide|json|yaml|name|csv`` and ``--no-headers`` on every command that
prints rows (tables.py draws them); errors become one readable line on stderr
and the exit code of exitcodes.py's table. Nothing a user can trigger (a dead
controller, a missing file, bad input, Ctrl-C) ends in a traceback;
``PROV_DEBUG=1`` re-raises unexpected exceptions for developers.

Nothing heavy is imported here: rich, yaml and httpx load when a command prints
a table, YAML or makes a request, so ``prov --version`` and ``--help`` stay fast.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from provisioner.cli import exitcodes, tables
from provisioner.cli.tables import Columns
from provisioner.errors import ProvError

if TYPE_CHECKING:
    from rich.console import Console

    from provisioner.client import ProvClient

F = TypeVar("F", bound=Callable[..., Any])

# Kept for importers of the old name (exitcodes.INTERRUPTED is the table's).
EXIT_INTERRUPTED = exitcodes.INTERRUPTED


class OutputFormat(enum.StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"
    csv = "csv"

    @property
    def tabular(self) -> bool:
        """Rows flattened for a person or a line-based tool (not the API's JSON/YAML documents)."""
        return self not in (OutputFormat.json, OutputFormat.yaml)


OutputOpt = typer.Option(
    OutputFormat.table, "--output", "-o",
    help="table (fits the terminal), wide (every column), json, yaml, name (one per line) or csv",
)
NoHeadersOpt = Annotated[bool, typer.Option("--no-headers", help="leave out the header line (table, wide, csv)")]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="do not ask for confirmation (off a terminal, a delete needs it)")
]

_consoles: dict[str, Console] = {}


def stdout_console() -> Console:
    """rich's console on stdout (made on first use; rich follows sys.stdout at print time, as CliRunner needs)."""
    if "out" not in _consoles:
        from rich.console import Console

        _consoles["out"] = Console(soft_wrap=False)
    return _consoles["out"]


def stderr_console() -> Console:
    if "err" not in _consoles:
        from rich.console import Console

        _consoles["err"] = Console(stderr=True, soft_wrap=True)
    return _consoles["err"]


def __getattr__(name: str) -> Any:
    # ``from provisioner.cli.output import console, err_console`` in modules not moved to the functions yet.
    if name == "console":
        return stdout_console()
    if name == "err_console":
        return stderr_console()
    raise AttributeError(name)


def client() -> ProvClient:
    from provisioner.client import ProvClient

    return ProvClient()


def _one_line(message: str) -> str:
    # A server or peer message may carry newlines; the contract is one line. Secrets the
    # command read (BMC passwords, tokens) are registered with secret_store.register and masked.
    from provisioner.secret_store import mask  # imported on the error path only: it loads the settings stack

    return mask(" ".join(str(message).split())) or "unknown error"


def fail(message: str, code: int = exitcodes.ERROR) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Decorator: ProvError -> one line on stderr + its exit code (exitcodes.for_error)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProvError as exc:
            raise fail(exc.message, exitcodes.for_error(exc)) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own control flow and usage errors (typer.BadParameter...)
        except KeyboardInterrupt:
            raise fail("interrupted", exitcodes.INTERRUPTED) from None
        except OSError as exc:  # a file the user named, a broken pipe...
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise fail(f"{where}{exc.strerror or exc}", exitcodes.ERROR) from None
        except Exception as exc:
            if os.environ.get("PROV_DEBUG") == "1":
                raise
            raise fail(f"unexpected {exc.__class__.__name__}: {exc}", exitcodes.ERROR) from None

    return wrapper  # type: ignore[return-value]


def confirm(question: str, yes: bool, *, refuse_off_terminal: bool = True) -> None:
    """Ask ``question [y/N]`` on a terminal unless ``--yes``; off a terminal refuse (exit 1) or go on.

    ``refuse_off_terminal``: for what cannot be undone (deleting), a script must say ``--yes``;
    otherwise (powering off, say) a script goes on as before and only a person is asked.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        if refuse_off_terminal:
            raise fail(f"{question.rstrip('?')}: not confirmed (not a terminal; add --yes)", exitcodes.ERROR)
        return
    if not typer.confirm(question, default=False, err=True):
        raise fail("not confirmed: nothing was changed", exitcodes.ERROR)


def items(resp: Any) -> list[dict[str, Any]]:
    """The rows of a list response: ``{"data": [...], "count": N}`` or a bare list."""
    if isinstance(resp, dict) and isinstance(resp.get("data"), list):
        return list(resp["data"])
    if isinstance(resp, list):
        return resp
    return []


def jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def emit(
    data: Any,
    fmt: OutputFormat,
    columns: Columns | Sequence[str] | None = None,
    title: str | None = None,
    *,
    headers: bool = True,
) -> None:
    """Print ``data`` (a dict or a list of dicts) in the chosen format.

    json and yaml print ``data`` as it is. The others print rows: ``columns`` picks and
    orders them (dotted paths reach into nested dicts, e.g. ``bmc.address``; a Columns
    also names what ``-o wide`` adds and what a narrow terminal drops). A dict without
    ``columns`` is one object, printed as key/value lines.
    """
    if fmt == OutputFormat.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if fmt == OutputFormat.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(jsonable(data), sort_keys=False))
        return
    rows: list[dict[str, Any]] = [r if isinstance(r, dict) else {"value": r} for r in
                                  (data if isinstance(data, list) else [data])]
    if fmt == OutputFormat.name:
        tables.names(rows)
        return
    tty = sys.stdout.isatty()
    if isinstance(data, dict) and columns is None and fmt != OutputFormat.csv:
        tables.key_values(data, title=title, console=stdout_console() if tty else None)
        return
    spec = Columns.of(columns, rows)
    cols = spec.pick(fmt in (OutputFormat.wide, OutputFormat.csv), rows)
    if fmt == OutputFormat.csv:
        tables.as_csv(rows, cols, headers=headers)
        return
    if not rows:
        # a person sees that the list is empty; a pipe gets no line at all
        (sys.stdout if tty else sys.stderr).write("(none)\n")
        return
    if tty:
        tables.rich_table(rows, cols, headers=headers, title=title, console=stdout_console(), drop=spec.drop,
                          wide=fmt == OutputFormat.wide)
        return
    if title and headers:
        sys.stdout.write(f"{title}\n")
    tables.plain(rows, cols, headers=headers)
