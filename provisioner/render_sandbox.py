"""The bounded Jinja2 sandbox: Jinja's immutable sandbox plus the limits of render_limits.py.

How the limits reach a template:

* at parse time the syntax tree is checked for depth and rewritten so that
  every ``{% for %}`` iterable, every ``{{ }}`` value, every block of literal
  text, every ``~`` and every list/tuple/dict literal passes through a guard
  (``environment.prov_guard_*``); compiled templates are cached with the guards
  in them, so a template loaded once is bounded every time it runs;
* ``call`` (every call a template makes) ticks the deadline, keeps the call
  depth, checks the built-in methods that grow a value and the weight of what
  a call returns; the intercepted operators are size-checked before they run;
* ``range``, ``lipsum`` and the filters that can grow text or allocate many
  items are replaced by checked versions; every filter's result is weighed;
* ``str.format`` runs without attribute/index lookups, ``format_map`` is refused.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

from provisioner.render_limits import (
    DEFAULT_LIMITS,
    Budget,
    LimitExceeded,
    Limits,
    bounded_format,
    budget,
    check_binop,
    check_method,
    check_percent_format,
    check_size,
    check_value,
    is_int,
    limits,
    replace_size,
    take_sized,
    weighed,
    weight,
)


# --------------------------------------------------------------------------- guards the rewritten tree calls
def guard_iter(iterable: Any) -> Any:
    """Every ``{% for %}`` iterates through here: the loop is charged to the budget."""
    b = budget()
    if isinstance(iterable, jinja2.Undefined):
        return iterable  # iterating it raises (StrictUndefined), as before
    try:
        n = len(iterable)
    except TypeError:
        return _counted(iter(iterable), b)
    b.iterate(n)  # Jinja has no break: a sized loop runs all its items
    return iterable


def _counted(it: Iterator[Any], b: Budget) -> Iterator[Any]:
    for item in it:
        b.iterate(1)
        yield item


def guard_out(value: Any) -> Any:
    """Every ``{{ expression }}``: charged before Jinja turns it into text (returned unchanged)."""
    b = budget()
    b.produce(len(value) if isinstance(value, str) else weight(value, b.limits.text))
    return value


def guard_text(n: int) -> str:
    """Charges the literal text of one output statement (it may run in a loop or a macro)."""
    budget().produce(n)
    return ""


def guard_concat(eval_ctx: jinja2.nodes.EvalContext, *values: Any) -> str:
    """``a ~ b ~ c``: sized before it is joined (what Jinja's str_join/markup_join would return)."""
    texts = [v if isinstance(v, str) else str(v) for v in values]
    check_size(sum(len(t) for t in texts), "a string built with ~")
    budget().tick()
    if eval_ctx.autoescape or eval_ctx.volatile:
        return markup_join(values)
    return "".join(texts)


def guard_value(value: Any) -> Any:
    """A list, tuple or dict literal (``[a, a, a, ...]`` may name one big value many times)."""
    return check_value(value, "a literal")


def bounded_range(*args: int) -> range:
    rng = range(*args)
    check_size(len(rng), "range()")
    return rng


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    check_size(n * max * 12, "lipsum()")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


# --------------------------------------------------------------------------- filters
def _text(v: Any) -> str:
    return v if isinstance(v, str) else str(v)


def _pre_checks() -> dict[str, Callable[..., None]]:
    """Per filter: a check of its arguments before it runs (same signature as the filter, minus
    Jinja's context/environment argument)."""

    def center(value: Any, width: Any = 80, *_: Any) -> None:
        if is_int(width):
            check_size(len(_text(value)) + width, "center")

    def indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> None:
        pad = width if is_int(width) else len(_text(width))
        check_size(len(_text(s)) + (_text(s).count("\n") + 1) * max(pad, 0), "indent")

    def wordwrap(s: Any, width: Any = 79, break_long: Any = True, wrapstring: Any = None, *_: Any, **kw: Any) -> None:
        wrap = kw.get("wrapstring", wrapstring)
        text = _text(s)
        lines = len(text) // max(width if is_int(width) else 1, 1) + text.count("\n") + 1
        check_size(len(text) + lines * max(len(_text(wrap)) if wrap is not None else 1, 1), "wordwrap")

    def replace(s: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
        check_size(replace_size(_text(s), old, new, -1 if count is None else count), "replace")

    def fmt(value: Any, *args: Any, **kwargs: Any) -> None:
        check_percent_format(_text(value), kwargs or args)

    def items(value: Any, n: Any = 1, *_: Any, **__: Any) -> None:
        if is_int(n):
            check_size(n, "the number of batches or slices")

    return {"center": center, "indent": indent, "wordwrap": wordwrap, "replace": replace, "format": fmt,
            "batch": items, "slice": items}


def _bounded_join(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def join(eval_ctx: Any, value: Iterable[Any], d: Any = "", attribute: Any = None) -> Any:
        seq = take_sized(value, "join", len(d) if isinstance(d, str) else 0)  # sized while materialised
        return original(eval_ctx, seq, d, attribute)

    return join


def _numbers_only(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def total(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
        seq = take_sized(iterable, "sum")
        if not isinstance(start, int | float) or (attribute is None and not all(isinstance(x, int | float)
                                                                                  for x in seq)):
            raise LimitExceeded("sum adds numbers only")  # sum of lists or strings is quadratic
        return original(environment, seq, attribute, start)

    return total


def _checked(name: str, original: Callable[..., Any], pre: Callable[..., None] | None) -> Callable[..., Any]:
    passes = getattr(original, "jinja_pass_arg", None) is not None

    @functools.wraps(original)  # keeps jinja_pass_arg: Jinja still passes the context/environment
    def checked(*args: Any, **kwargs: Any) -> Any:
        if pre is not None:
            pre(*(args[1:] if passes else args), **kwargs)
        result = original(*args, **kwargs)
        if isinstance(result, Iterator):  # map, select, batch...: weighed as they are consumed
            return weighed(result, f"the results of filter {name}")
        return check_value(result, f"the result of filter {name}")

    return checked


def bounded_filters(filters: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    pre = _pre_checks()
    out: dict[str, Callable[..., Any]] = {}
    for name, f in filters.items():
        if name == "join":
            f = _bounded_join(f)
        elif name == "sum":
            f = _numbers_only(f)
        out[name] = _checked(name, f, pre.get(name))
    return out


# --------------------------------------------------------------------------- the syntax tree pass
_BLOCKS = (nodes.For, nodes.If, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.With, nodes.Block,
           nodes.Scope, nodes.ScopedEvalContextModifier, nodes.AssignBlock)


def check_nesting(tree: nodes.Node, lim: Limits) -> None:
    """Refuse trees nested deeper than the limits (iterative: a deep tree must not overflow us)."""
    stack: list[tuple[nodes.Node, int, int]] = [(tree, 0, 0)]
    while stack:
        node, depth, blocks = stack.pop()
        if depth > lim.node_depth:
            raise LimitExceeded(f"line {node.lineno}: nested more than {lim.node_depth} levels deep")
        if isinstance(node, _BLOCKS):
            blocks += 1
            if blocks > lim.block_nesting:
                raise LimitExceeded(f"line {node.lineno}: more than {lim.block_nesting} nested blocks")
        stack.extend((child, depth + 1, blocks) for child in node.iter_child_nodes())


def _call(name: str, args: list[Any], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), args, [], None, None, lineno=lineno)


class _InsertGuards(NodeTransformer):
    """Route loops, outputs, ``~`` and literals through the guards (see the module docstring)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call("prov_guard_iter", [node.iter], node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        literal = sum(len(c.data) for c in node.nodes if isinstance(c, nodes.TemplateData))
        children: list[nodes.Expr] = [c if isinstance(c, nodes.TemplateData) else
                                      _call("prov_guard_out", [c], c.lineno) for c in node.nodes]
        if literal:
            children.append(_call("prov_guard_text", [nodes.Const(literal, lineno=node.lineno)], node.lineno))
        node.nodes = children
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call("prov_guard_concat", list(node.nodes), node.lineno)

    def _literal(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node, nodes.Tuple) and node.ctx != "load":
            return node  # an assignment target: {% set a, b = ... %}
        return _call("prov_guard_value", [node], node.lineno)

    visit_List = visit_Tuple = visit_Dict = _literal


# --------------------------------------------------------------------------- the environment
class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with a bounded cost (see the module docstring)."""

    intercepted_binops = frozenset({"+", "-", "*", "**", "%"})

    def __init__(self, *args: Any, parse_limits: Limits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parse_limits = parse_limits
        # reached from the rewritten tree as ``environment.prov_guard_*``
        self.prov_guard_iter = guard_iter
        self.prov_guard_out = guard_out
        self.prov_guard_text = guard_text
        self.prov_guard_concat = guard_concat
        self.prov_guard_value = guard_value
        self.globals["range"] = bounded_range
        self.globals["lipsum"] = bounded_lipsum
        self.filters.update(bounded_filters(dict(self.filters)))

    def add_filters(self, extra: dict[str, Callable[..., Any]]) -> None:
        self.filters.update(bounded_filters(extra))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        try:
            tree = super()._parse(source, name, filename)
        except RecursionError as exc:
            raise LimitExceeded("nested too deeply to parse") from exc
        except ValueError as exc:  # e.g. an integer literal over Python's 4,300-digit conversion limit
            raise LimitExceeded(f"cannot parse: {exc}") from exc
        check_nesting(tree, self.parse_limits)
        tree = _InsertGuards().visit(tree)
        tree.set_environment(self)
        return tree

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __obj is guard_concat:
            return guard_concat(__context.eval_ctx, *args)
        if __obj is guard_out or __obj is guard_iter or __obj is guard_text or __obj is guard_value:
            return __obj(*args)
        b = budget()
        b.tick()
        if isinstance(__obj, types.BuiltinMethodType):
            args, kwargs = check_method(__obj, args, kwargs)
        elif isinstance(__obj, LoopContext) and args:  # loop(children) in a recursive loop
            args = (guard_iter(args[0]), *args[1:])
        b.depth += 1
        try:
            if b.depth > b.limits.call_depth:
                raise LimitExceeded(f"calls nested more than {b.limits.call_depth} deep (recursion?)")
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            b.depth -= 1
        return check_value(result, "the result of a call")

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        budget().tick()
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        if value.__name__ == "format_map":
            raise LimitExceeded("str.format_map() is not allowed in templates")
        return bounded_format(value.__self__, wrapped)


__all__ = ["BoundedSandbox", "LimitExceeded", "Limits", "limits"]
