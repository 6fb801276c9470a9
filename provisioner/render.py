"""The one Jinja2 environment for everything under templates/.

Sandboxed and bounded (operators upload their own templates: a template must
not reach Python internals nor spend the controller's CPU and memory; see
render_sandbox.py for the limits) and StrictUndefined (a template that uses a variable we do
not pass fails loudly, naming the variable, instead of rendering an empty
string into a kickstart). Operators' templates in ``{data_dir}/templates``
override the shipped ones of the same name.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError

from provisioner.errors import ProvError, TemplateError
from provisioner.render_limits import DEFAULT_LIMITS, LimitExceeded, Limits, bounded
from provisioner.render_sandbox import BoundedSandbox
from provisioner.settings import Settings, get_settings

_UNDEFINED_RE = re.compile(r"'([^']+)' is undefined")


def _filters() -> dict[str, Any]:
    return {
        "to_json": lambda v: json.dumps(v, sort_keys=True),
        "shell_quote": lambda v: shlex.quote(str(v)),
    }


def make_env(search_path: list[Path]) -> BoundedSandbox:
    env = BoundedSandbox(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.add_filters(_filters())
    return env


_env_cache: dict[tuple[str, ...], BoundedSandbox] = {}


def get_env(settings: Settings | None = None) -> BoundedSandbox:
    s = settings or get_settings()
    path = [s.user_templates_dir, s.templates_dir]
    key = tuple(str(p) for p in path)
    env = _env_cache.get(key)
    if env is None:
        env = _env_cache[key] = make_env(path)
    return env


def _translate(name: str, exc: Exception) -> TemplateError:
    if isinstance(exc, LimitExceeded):
        return TemplateError(template=name, reason=f"over a render limit: {exc}")
    if isinstance(exc, jinja2.UndefinedError):
        m = _UNDEFINED_RE.search(str(exc))
        var = m.group(1) if m else str(exc)
        return TemplateError(template=name, reason=f"missing variable {var!r}", variable=var)
    if isinstance(exc, SecurityError):
        return TemplateError(template=name, reason=f"not allowed in the sandbox: {exc}")
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateError(template=name, reason=f"syntax error line {exc.lineno}: {exc.message}")
    if isinstance(exc, jinja2.TemplateNotFound):
        return TemplateError(template=name, reason="no such template")
    if isinstance(exc, jinja2.TemplateError):
        return TemplateError(template=name, reason=str(exc))
    # Anything else a template can provoke (1/0, int('x'), a format_map KeyError...) is the
    # template's fault, not the controller's: a clear 422, never a 500.
    if isinstance(exc, RecursionError):
        return TemplateError(template=name, reason="over a render limit: recursion or nesting too deep")
    if isinstance(exc, MemoryError):
        return TemplateError(template=name, reason="over a render limit: needs too much memory")
    return TemplateError(template=name, reason=f"fails to render: {type(exc).__name__}: {exc}")


def _collect(chunks: Iterable[str], limits: Limits) -> str:
    """The output, streamed and counted: refused as soon as it passes ``limits.output``."""
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limits.output:
            raise LimitExceeded(f"output longer than {limits.output} characters")
        out.append(chunk)
    return "".join(out)


def _run(name: str, make: Any, context: dict[str, Any], limits: Limits) -> str:
    try:
        with bounded(limits):
            return _collect(make().generate(**context), limits)
    except ProvError:
        raise
    except Exception as exc:
        raise _translate(name, exc) from exc


def render(name: str, context: dict[str, Any], settings: Settings | None = None,
           limits: Limits = DEFAULT_LIMITS) -> str:
    """Render ``templates/<name>`` (e.g. ``libvirt/domain.xml.j2``) with ``context``."""
    env = get_env(settings)
    return _run(name, lambda: env.get_template(name), context, limits)


def render_string(
    source: str, context: dict[str, Any], name: str = "<string>", settings: Settings | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """Render an operator-supplied template body (upload check) in the same sandbox.

    With ``settings`` the body may import/include the installed templates
    (e.g. ``common/cmdline.j2``), exactly as it will when rendered for real.
    """
    env = get_env(settings) if settings is not None else make_env([])
    return _run(name, lambda: env.from_string(source), context, limits)
