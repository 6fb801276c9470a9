"""What one template render may cost, and the checks that keep it there.

Jinja's sandbox keeps a template away from Python internals; it does not stop
one from spending the controller's CPU and memory: two nested ``range(100000)``
loops run for hours, ``'x' * 10**9`` or ``10 ** 10**9`` allocate gigabytes, a
list literal naming one big string 50,000 times turns into gigabytes when it is
printed. The rule here: *no value may weigh more than* ``Limits.value``
(about what ``str()`` of it would be long), checked *before* an operation that
allocates text in one go (``*``, ``**``, ``+``, ``%``, ``~``, the growing string
methods and filters) and after those that only build references (literals,
calls, filters). A render also has a deadline, a budget of loop iterations and
of text produced, and a call depth. render_sandbox.py wires these checks into
the environment; every refusal is a :class:`LimitExceeded` naming the limit.
"""

from __future__ import annotations

import contextlib
import math
import re
import string
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError
from jinja2.utils import Namespace


class LimitExceeded(SecurityError):
    """A template went over one of the render limits (the message names it)."""


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0  # wall clock for one render
    iterations: int = 1_000_000  # loop iterations over the whole render
    text: int = 32 * 1024 * 1024  # characters produced by {{ }} and template text, buffered ones included
    output: int = 16 * 1024 * 1024  # characters of the final output
    value: int = 4 * 1024 * 1024  # weight (about len(str(v))) of any one value a template builds
    int_bits: int = 4096  # an integer result of + - * ** (about 1,200 decimal digits)
    call_depth: int = 40  # nested macro / caller() / recursive loop calls
    block_nesting: int = 16  # nested {% for %} / {% if %} / {% macro %}... (Python stops at 20 loops)
    node_depth: int = 150  # nesting of the syntax tree (a + b + c... nests one level per term; Python's
    # parser stops at 200 nested parentheses in the code Jinja generates)


DEFAULT_LIMITS = Limits()
# An operator's upload is checked against sample data: real templates stay far below these.
UPLOAD_LIMITS = Limits(seconds=2.0, iterations=200_000, text=4 * 1024 * 1024, output=1024 * 1024,
                       value=1024 * 1024)


class Budget:
    """What one render has spent so far."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.iterations = 0
        self.text = 0
        self.depth = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"rendering took longer than {self.limits.seconds:g} s")

    def iterate(self, n: int) -> None:
        self.iterations += n
        if self.iterations > self.limits.iterations:
            raise LimitExceeded(f"more than {self.limits.iterations} loop iterations")
        self.tick()

    def produce(self, n: int) -> None:
        self.text += n
        if self.text > self.limits.text:
            raise LimitExceeded(f"produces more than {self.limits.text} characters of text")
        self.tick()


_BUDGET: ContextVar[Budget | None] = ContextVar("prov_render_budget", default=None)


@contextlib.contextmanager
def bounded(limits: Limits = DEFAULT_LIMITS) -> Iterator[Budget]:
    """Run one render under ``limits``; a render inside a render shares the outer budget."""
    outer = _BUDGET.get()
    if outer is not None:
        yield outer
        return
    budget = Budget(limits)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def budget() -> Budget:
    # Outside bounded() (compile-time constant folding, a direct Template.render) the
    # size checks still apply; the counters then last for this one operation only.
    return _BUDGET.get() or Budget(DEFAULT_LIMITS)


def limits() -> Limits:
    b = _BUDGET.get()
    return b.limits if b is not None else DEFAULT_LIMITS


# --------------------------------------------------------------------------- sizes
def weight(value: Any, cap: int) -> int:
    """About ``len(str(value))``, counting shared references each time; stops once over ``cap``."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v) + 2
        elif isinstance(v, bool) or v is None or isinstance(v, float | jinja2.Undefined):
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, Namespace):
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        else:
            total += 16
        if total > cap:
            return total
    return total


def check_size(n: int, what: str) -> None:
    limit = limits().value
    if n > limit:
        raise LimitExceeded(f"{what} would be {n} long (limit {limit})")


def check_value(value: Any, what: str) -> Any:
    """Refuse ``value`` when it weighs more than the limit; returns it."""
    if isinstance(value, str):
        check_size(len(value), what)
    elif not isinstance(value, int | float | bool) and value is not None:
        limit = limits().value
        if weight(value, limit) > limit:
            raise LimitExceeded(f"{what} is larger than {limit} characters")
    return value


def _check_bits(bits: int, what: str) -> None:
    limit = limits().int_bits
    if bits > limit:
        raise LimitExceeded(f"{what} would have about {bits} bits (limit {limit})")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _len(v: Any) -> int:
    return len(v) if isinstance(v, str | bytes) else weight(v, limits().value + 1)


# --------------------------------------------------------------------------- formats
_PERCENT_SPEC = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def check_percent_format(fmt: str, args: Any) -> None:
    """``fmt % args`` (and the ``format`` filter): bounded widths and arguments, no ``*``."""
    total = len(fmt)
    for m in _PERCENT_SPEC.finditer(fmt):
        key, width, precision, _kind = m.groups()
        for part in (width, precision):
            if part == "*":
                raise LimitExceeded("a '*' width in a % format is not allowed")
            if part:
                total += int(part)
        if key is not None and isinstance(args, dict):
            total += _len(args.get(key, ""))
    if isinstance(args, tuple):
        total += sum(_len(a) for a in args)
    elif not isinstance(args, dict):
        total += _len(args)
    check_size(total, "a % formatted string")


def check_brace_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``str.format``: plain fields only (no ``{0.attr}``/``{0[key]}``), bounded widths and arguments."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise LimitExceeded(f"bad format string: {exc}") from exc
    total = 0
    auto = 0
    for literal, field, spec, _conversion in parsed:
        total += len(literal)
        if field is None:
            continue
        if "." in field or "[" in field:
            raise LimitExceeded(f"format field {{{field}}}: attribute and index lookups are not allowed")
        if spec and "{" in spec:
            raise LimitExceeded("nested format fields are not allowed")
        width = sum(int(d) for d in re.findall(r"\d+", spec or ""))
        if field == "":
            value = args[auto] if auto < len(args) else ""
            auto += 1
        elif field.isdigit():
            value = args[int(field)] if int(field) < len(args) else ""
        else:
            value = kwargs.get(field, "")
        total += max(width, _len(value))
    check_size(total, "a formatted string")


def bounded_format(value: str, fmt: Any) -> Any:
    """Wraps a sandboxed ``str.format`` (Jinja's ``wrap_str_format``) with the checks above."""

    def format_checked(*args: Any, **kwargs: Any) -> Any:
        check_brace_format(value, args, kwargs)
        return fmt(*args, **kwargs)

    return format_checked


# --------------------------------------------------------------------------- operators and methods
def replace_size(s: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes) or type(old) is not type(s):
        return len(s)
    hits = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]
    if is_int(count) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


def take_sized(iterable: Any, what: str, per_item: int = 0) -> list[Any]:
    """``list(iterable)``, refused as soon as the items (plus ``per_item`` each) outweigh the limit:
    a generator chain (``map``, ``select``...) is never materialised past it."""
    limit = limits().value
    items: list[Any] = []
    total = 0
    for item in iterable:
        total += _len(item) + per_item
        if total > limit:
            raise LimitExceeded(f"{what} would be more than {limit} long")
        items.append(item)
    return items


def weighed(it: Iterator[Any], what: str) -> Iterator[Any]:
    """Passes a lazy result through, refusing once what it has yielded outweighs the limit."""
    limit = limits().value
    total = 0
    for item in it:
        total += _len(item)
        if total > limit:
            raise LimitExceeded(f"{what} would be more than {limit} long")
        yield item


def check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Built-in methods that grow a value; returns the args (an iterable to join is materialised once)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str | bytes):
        if name in ("ljust", "rjust", "center", "zfill") and args and is_int(args[0]):
            check_size(args[0], f"str.{name}()")
        elif name == "expandtabs":
            tab = args[0] if args else kwargs.get("tabsize", 8)
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            check_size(len(owner) + tabs * (tab if is_int(tab) and tab > 0 else 0), "str.expandtabs()")
        elif name == "replace" and len(args) >= 2:
            check_size(replace_size(owner, *args[:3]), "str.replace()")
        elif name == "join" and args:
            args = (take_sized(args[0], "str.join()", _len(owner)), *args[1:])
        elif name == "translate":
            raise LimitExceeded("str.translate() is not allowed in templates")
    elif is_int(owner) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if is_int(length):
            check_size(length, "int.to_bytes()")
    return args, kwargs


def check_binop(op: str, left: Any, right: Any) -> None:
    if is_int(left) and is_int(right):
        if op == "**" and right > 0 and abs(left) > 1:
            _check_bits(int(right * math.log2(abs(left))) + 1, "an integer power")
        elif op == "*":
            _check_bits(left.bit_length() + right.bit_length(), "an integer product")
        elif op in ("+", "-"):
            _check_bits(max(left.bit_length(), right.bit_length()) + 1, "an integer sum")
    elif op == "*":
        if is_int(right) and not isinstance(left, int | float):
            check_size(_len(left) * right, "a repeated value")
        elif is_int(left) and not isinstance(right, int | float):
            check_size(_len(right) * left, "a repeated value")
    elif op == "+" and not isinstance(left, int | float) and not isinstance(right, int | float):
        check_size(_len(left) + _len(right), "a concatenation")
    elif op == "%" and isinstance(left, str):
        check_percent_format(left, right)
