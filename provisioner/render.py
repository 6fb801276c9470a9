"""The one Jinja2 environment for everything under templates/.

Sandboxed (operators upload their own templates: a template must not reach
Python internals) and StrictUndefined (a template that uses a variable we do
not pass fails loudly, naming the variable, instead of rendering an empty
string into a kickstart). Operators' templates in ``{data_dir}/templates``
override the shipped ones of the same name.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from provisioner.errors import TemplateError
from provisioner.settings import Settings, get_settings

_UNDEFINED_RE = re.compile(r"'([^']+)' is undefined")


def _filters() -> dict[str, Any]:
    return {
        "to_json": lambda v: json.dumps(v, sort_keys=True),
        "shell_quote": lambda v: shlex.quote(str(v)),
    }


def make_env(search_path: list[Path]) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(_filters())
    return env


_env_cache: dict[tuple[str, ...], ImmutableSandboxedEnvironment] = {}


def get_env(settings: Settings | None = None) -> ImmutableSandboxedEnvironment:
    s = settings or get_settings()
    path = [s.user_templates_dir, s.templates_dir]
    key = tuple(str(p) for p in path)
    env = _env_cache.get(key)
    if env is None:
        env = _env_cache[key] = make_env(path)
    return env


def _translate(name: str, exc: Exception) -> TemplateError:
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
    return TemplateError(template=name, reason=str(exc))


def render(name: str, context: dict[str, Any], settings: Settings | None = None) -> str:
    """Render ``templates/<name>`` (e.g. ``libvirt/domain.xml.j2``) with ``context``."""
    try:
        return get_env(settings).get_template(name).render(**context)
    except (jinja2.TemplateError, SecurityError) as exc:
        raise _translate(name, exc) from exc


def render_string(
    source: str, context: dict[str, Any], name: str = "<string>", settings: Settings | None = None
) -> str:
    """Render an operator-supplied template body (upload check) in the same sandbox.

    With ``settings`` the body may import/include the installed templates
    (e.g. ``common/cmdline.j2``), exactly as it will when rendered for real.
    """
    env = get_env(settings) if settings is not None else make_env([])
    try:
        return env.from_string(source).render(**context)
    except (jinja2.TemplateError, SecurityError) as exc:
        raise _translate(name, exc) from exc
