"""The ``prov serve --role ...`` commands that deploy/ runs, read out of its files (issue 14, item 5).

Tests run and check exactly what the files say, so each reader here does what the real
consumer does with the file, no more:

* ``compose_services``: deploy/compose.cluster.yaml as compose renders it: YAML anchors and
  merge keys (PyYAML), then ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and
  ``${VAR:?message}`` interpolation from the given variables (the compose specification's
  "Interpolation"; ``$$`` is a literal ``$``). tests/unit/deploy compares the result with
  ``docker-compose config`` where that client is installed.
* ``unit_exec``: a systemd unit's ExecStart= as systemd runs it: ``%i``/``%I`` specifiers,
  ``${VAR}`` from the unit's Environment= lines and its EnvironmentFile= files (which override
  Environment=, systemd.exec(5)), then split into words.
* ``serve_problem``: whether argv (after ``prov``) is a valid ``prov serve`` command line for
  the real CLI: the click command behind ``prov serve`` parses it (types and choices checked),
  nothing runs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_CLUSTER = DEPLOY / "compose.cluster.yaml"
SYSTEMD = DEPLOY / "systemd"
ROLE_UNITS = ("prov-api.service", "prov-conductor.service", "prov-boot@.service")
# The services of compose.cluster.yaml that run prov (the rest is PostgreSQL).
PROV_SERVICES = ("api1", "api2", "conductor1", "conductor2", "boot")

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (compose refuses to render the file)."""


def interpolate(text: str, variables: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = variables.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op in ("-", ":-"):
            return interpolate(arg, variables)
        if op in ("?", ":?"):
            raise MissingVariable(f"{name}: {arg}")
        return ""

    return _VAR.sub(one, text)


def _interpolate_tree(node: Any, variables: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables) for k, v in node.items()}
    return node


@dataclass
class ComposeService:
    name: str
    command: list[str]
    environment: dict[str, str]
    raw: dict[str, Any] = field(repr=False)


def compose_document(variables: dict[str, str], path: Path = COMPOSE_CLUSTER) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    return _interpolate_tree({k: v for k, v in doc.items() if not k.startswith("x-")}, variables)  # type: ignore[no-any-return]


def compose_services(variables: dict[str, str], path: Path = COMPOSE_CLUSTER) -> dict[str, ComposeService]:
    out = {}
    for name, svc in compose_document(variables, path)["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):  # the KEY=VALUE list form
            env = dict(item.split("=", 1) for item in env)
        cmd = svc.get("command") or []
        out[name] = ComposeService(name, shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd],
                                   {k: "" if v is None else str(v) for k, v in env.items()}, svc)
    return out


# --------------------------------------------------------------------------- systemd
def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in file order; repeated keys kept (EnvironmentFile=, Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: {line!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries(path).get(section, []) if k == key]


def unescape_instance(instance: str) -> str:
    """systemd-escape -u for the characters a CIDR escapes to ("-" is "/", \\xNN a byte)."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), instance.replace("-", "/"))


def read_environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads an EnvironmentFile (comments and blank lines skipped,
    one level of matching quotes removed)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


@dataclass
class UnitExec:
    argv: list[str]
    environment: dict[str, str]  # Environment= then the EnvironmentFile= files
    environment_files: list[str]  # as written, after specifiers ("-" prefix kept)


def unit_exec(path: Path, instance: str = "", files: dict[str, Path] | None = None) -> UnitExec:
    """``files`` maps an EnvironmentFile path the unit names to the file to read instead (a test's
    copy of /etc/prov/prov.env); unmapped optional ("-") files are skipped like missing ones."""
    spec = {"%i": instance, "%I": unescape_instance(instance), "%%": "%"}

    def specifiers(text: str) -> str:
        return re.sub(r"%[iI%]", lambda m: spec[m.group(0)], text)

    env: dict[str, str] = {}
    for value in unit_values(path, "Service", "Environment"):
        for word in shlex.split(specifiers(value)):
            key, _, val = word.partition("=")
            env[key] = val
    env_files = [specifiers(v) for v in unit_values(path, "Service", "EnvironmentFile")]
    for name in env_files:
        optional = name.startswith("-")
        real = (files or {}).get(name.lstrip("-"))
        if real is None:
            if optional:
                continue
            raise FileNotFoundError(f"{path.name}: EnvironmentFile={name} is required and was not given")
        env.update(read_environment_file(real))
    (line,) = unit_values(path, "Service", "ExecStart")
    words = shlex.split(specifiers(line))
    # systemd replaces a word that is exactly ${VAR} by the variable's value (one word).
    argv = [re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), w) for w in words]
    return UnitExec(argv, env, env_files)


# --------------------------------------------------------------------------- the CLI
def serve_problem(argv: list[str]) -> str | None:
    """None when ``prov <argv>`` is a ``prov serve`` command line the real CLI accepts, else why not."""
    # typer 0.29 vendors click (typer._click): its exceptions are reached through the command.
    from provisioner.cli.main import build

    if not argv or argv[0] != "serve":
        return f"not a prov serve command: {argv}"
    serve = build().commands["serve"]
    try:
        serve.make_context("serve", list(argv[1:]), resilient_parsing=False)
    except Exception as exc:  # click's UsageError/BadParameter, or Exit (--help)
        if type(exc).__name__ == "Exit":
            return None
        message = getattr(exc, "format_message", None)
        return str(message()) if message else repr(exc)
    return None

