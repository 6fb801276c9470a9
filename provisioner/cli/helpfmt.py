"""Help that says what to type: ``--rack RACK``, ``--output <table|json|...>``, a flag with no type.

Typer labels a value by its Python annotation (``<str>``, ``<bool>``,
``<list[str]>``). After the command tree is built, every option that takes a
free value is given a metavar named after it (``--bmc-address ADDRESS``, a path
``FILE``/``DIR``), flags lose the label, arguments are shown by their upper-case
name; options with a fixed set of values show their choices (``<a|b|c>``).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption


class _NamedArgument(TyperArgument):
    """An argument shown by its name alone (NAME), or by its choices."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return super().display_type_rich(ctx) if _is_choice(self) else None


def _is_choice(param: Any) -> bool:
    desc = getattr(param, "type_descriptor", None)
    return bool(getattr(desc, "is_choice", False))


def _path_word(param: Any) -> str | None:
    desc = getattr(param, "type_descriptor", None)
    if not getattr(desc, "is_path", False):
        return None
    info = getattr(desc, "parameter_info", None)
    if getattr(info, "dir_okay", True) is False:
        return "FILE"
    if getattr(info, "file_okay", True) is False:
        return "DIR"
    return "PATH"


def metavar_for(param: TyperOption) -> str:
    """``--bmc-address`` -> ADDRESS, ``--user-data`` (a file) -> FILE."""
    word = _path_word(param)
    if word:
        return word
    longs = [o for o in param.opts if o.startswith("--")] or list(param.opts)
    return max(longs, key=len).lstrip("-").rsplit("-", 1)[-1].upper()


def polish(command: Any) -> Any:
    """Set metavars on every command of the tree (in place); returns the command."""
    for param in command.params:
        if isinstance(param, TyperOption):
            desc: Any = getattr(param, "type_descriptor", None)
            if param.metavar is None and _is_choice(param) and getattr(desc, "is_list", False):
                # a repeatable option: its choices, not ``<list[a|b]>`` (the help says it repeats)
                param.metavar = "<" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + ">"
            if param.metavar is not None or _is_choice(param):
                continue
            param.metavar = "" if (param.is_flag or param.count) else metavar_for(param)
        elif isinstance(param, TyperArgument) and type(param) is TyperArgument:
            if param.metavar is None:
                param.metavar = (param.name or "value").upper()
            param.__class__ = _NamedArgument
    for sub in getattr(command, "commands", {}).values():
        polish(sub)
    return command
