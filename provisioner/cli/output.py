"""How every CLI command prints results and errors.

``--output table|json|yaml``; errors become one readable line on stderr and the
exit code of the error class (errors.ProvError.exit_code).
"""

from __future__ import annotations

import enum
import functools
import json
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

console = Console()
err_console = Console(stderr=True)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = typer.Option(OutputFormat.table, "--output", "-o", help="table, json or yaml")


def client() -> ProvClient:
    return ProvClient()


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Decorator: ProvError -> one line on stderr + the class's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProvError as exc:
            raise fail(exc.message, exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def emit(data: Any, fmt: OutputFormat, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print ``data`` (a dict or a list of dicts) in the chosen format."""
    if fmt == OutputFormat.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if fmt == OutputFormat.yaml:
        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        console.print("(none)")
        return
    if isinstance(data, dict) and columns is None:
        table = Table(show_header=False, title=title)
        for k, v in data.items():
            table.add_row(str(k), _cell(v))
        console.print(table)
        return
    cols = list(columns or rows[0].keys())
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in cols])
    console.print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)
