"""Rows printed as a table, plain columns, CSV or names (``-o table|wide|csv|name``).

On a terminal a table fits its width without folding a cell over two lines:
values without spaces (names, MACs, states, addresses, times) are never cut;
free text (errors, messages) is shortened with an ellipsis; when even that does
not fit, the columns a command marks as least useful are left out (``-o wide``
shows them all). Off a terminal (a pipe, a file, a CI log) the same rows are
plain columns separated by spaces, one line per row, which ``awk``/``cut`` read.
rich is imported only to draw a table on a terminal.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console

# A free-text column keeps at least this many characters before columns are dropped.
MIN_TEXT = 12
# The rich table's frame: one space of padding each side of a cell and a rule between columns.
_FRAME_PER_COLUMN = 3


@dataclass(frozen=True)
class Columns:
    """Which row fields a table shows.

    ``table``: the default columns, in order. ``wide``: what ``-o wide`` adds (all the
    rows' fields when empty). ``drop``: left out first on a narrow terminal, in this order
    (after them, columns from the right; the first column always stays).
    """

    table: tuple[str, ...]
    wide: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: Columns | Sequence[str] | None, rows: Sequence[dict[str, Any]]) -> Columns:
        if isinstance(spec, Columns):
            return spec
        if spec:
            return cls(table=tuple(spec))
        return cls(table=tuple(all_keys(rows)))

    def pick(self, wide: bool, rows: Sequence[dict[str, Any]]) -> list[str]:
        if not wide:
            return list(self.table)
        extra = self.wide or tuple(all_keys(rows))
        return list(dict.fromkeys([*self.table, *extra]))


def all_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def pick(row: Any, path: str) -> Any:
    """A dotted path into nested dicts (``bmc.address``)."""
    cur = row
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def cell(v: Any, empty: str = "-") -> str:
    if v is None or v == "":
        return empty
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ",".join(cell(x) if isinstance(x, dict | list) else str(x) for x in v) or empty
    if isinstance(v, dict):
        return " ".join(f"{k}={cell(x)}" for k, x in v.items()) or empty
    return " ".join(str(v).split()) if "\n" in str(v) else str(v)


def header(path: str) -> str:
    return path.split(".")[-1]


def grid(rows: Sequence[dict[str, Any]], cols: Sequence[str], empty: str = "-") -> list[list[str]]:
    return [[cell(pick(r, c), empty) for c in cols] for r in rows]


def _measure(cols: Sequence[str], cells: list[list[str]]) -> tuple[dict[str, int], dict[str, bool]]:
    """Each column's natural width, and whether it is free text (has spaces: may be shortened)."""
    natural = {c: max([len(header(c)), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)}
    text = {c: any(" " in r[i] for r in cells) for i, c in enumerate(cols)}
    return natural, text


def _frame(n: int) -> int:
    return _FRAME_PER_COLUMN * n + 1


def fit(cols: Sequence[str], cells: list[list[str]], width: int, drop: Sequence[str] = ()) -> list[str]:
    """The columns that fit ``width`` on a terminal, leaving out ``drop`` first, then from the right."""
    natural, text = _measure(cols, cells)

    def need(cs: Sequence[str]) -> int:
        return sum(min(natural[c], MIN_TEXT) if text[c] else natural[c] for c in cs) + _frame(len(cs))

    kept = list(cols)
    order = [c for c in drop if c in kept] + [c for c in reversed(kept[1:]) if c not in drop]
    for c in order:
        if need(kept) <= width or len(kept) <= 1:
            break
        kept.remove(c)
    return kept


def widths(cols: Sequence[str], cells: list[list[str]], width: int | None) -> dict[str, int]:
    """Every column's width: values without spaces whole, free text sharing what is left (``None``: all whole)."""
    natural, text = _measure(cols, cells)
    if width is None:
        return natural
    room = width - _frame(len(cols)) - sum(natural[c] for c in cols if not text[c])
    free = [c for c in cols if text[c]]
    out = dict(natural)
    if free and sum(natural[c] for c in free) > room:
        share = max(MIN_TEXT, room // len(free))
        for c in free:
            out[c] = min(natural[c], share)
    return out


def rich_table(rows: Sequence[dict[str, Any]], cols: Sequence[str], *, headers: bool, title: str | None,
               console: Console, drop: Sequence[str] = (), wide: bool = False) -> None:
    """A rich table on a terminal: fitted to its width (or, ``wide``, as wide as the rows need)."""
    from rich.console import Console
    from rich.table import Table

    cells = grid(rows, cols)
    shown = list(cols) if wide else fit(cols, cells, console.width, drop)
    index = [list(cols).index(c) for c in shown]
    cells = [[r[i] for i in index] for r in cells]
    sizes = widths(shown, cells, None if wide else console.width)
    table = Table(title=title, show_header=headers)
    for c in shown:
        # one line per row: a cell never folds; only free text is shortened, with an ellipsis
        table.add_column(header(c), no_wrap=True, overflow="ellipsis", width=sizes[c])
    for r in cells:
        table.add_row(*r)
    if wide:
        # as wide as the rows need, past the terminal's edge if it must (the terminal wraps the lines)
        need = sum(sizes.values()) + _frame(len(shown))
        if need > console.width:
            console = Console(file=console.file, width=need, soft_wrap=False)
    console.print(table, markup=False, highlight=False)


def plain(rows: Sequence[dict[str, Any]], cols: Sequence[str], *, headers: bool, out: TextIO | None = None) -> None:
    """Whitespace-separated columns, one line per row (a pipe, a file: no frame, no colour)."""
    out = out or sys.stdout
    lines = ([[header(c) for c in cols]] if headers else []) + grid(rows, cols)
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    for line in lines:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")


def key_values(data: dict[str, Any], *, title: str | None, console: Console | None) -> None:
    """One object as ``key value`` lines: a two-column table on a terminal, aligned text otherwise."""
    if console is None:
        pairs = [(str(k), cell(v)) for k, v in data.items()]
        if title:
            sys.stdout.write(f"{title}\n")
        width = max((len(k) for k, _ in pairs), default=0)
        for k, v in pairs:
            sys.stdout.write(f"{k.ljust(width)}  {v}".rstrip() + "\n")
        return
    from rich.table import Table

    table = Table(show_header=False, title=title)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in data.items():
        table.add_row(str(k), cell(v))
    console.print(table, markup=False, highlight=False)


def as_csv(rows: Sequence[dict[str, Any]], cols: Sequence[str], *, headers: bool, out: TextIO | None = None) -> None:
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    if headers:
        writer.writerow([header(c) for c in cols])
    writer.writerows(grid(rows, cols, empty=""))


def names(rows: Sequence[dict[str, Any]], out: TextIO | None = None) -> None:
    """One name per line (a task's id, a result row's host): for ``xargs`` and loops."""
    out = out or sys.stdout
    for row in rows:
        value = next((row[k] for k in ("name", "id", "host", "object") if row.get(k) not in (None, "")), None)
        if value is not None:
            out.write(f"{value}\n")
