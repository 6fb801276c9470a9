"""The import layers of docs/architecture.md, checked on every run (CI included).

Arrows point down only: drivers are adapters (never the database or the
conductor), the conductor is the only layer that reads the database and calls
drivers, routes call crud and the conductor, the CLI and GitOps are clients of
the API. Every import counts, at module level or inside a function, and so does
a module reached through ``importlib`` (which is refused outright: every module
of the package always ships, so a back-channel has no reason to exist).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "provisioner"

# Layer (path prefix inside the package) -> modules it must never import.
_STORE = ("provisioner.db", "provisioner.crud", "provisioner.models", "provisioner.lifecycle", "provisioner.migrate")
_UPPER = ("provisioner.conductor", "provisioner.api", "provisioner.cli", "provisioner.gitops")
RULES: dict[str, tuple[str, ...]] = {
    "drivers/": (*_STORE, *_UPPER, "provisioner.lab", "provisioner.auth", "provisioner.client",
                 "provisioner.templates_catalog"),
    "conductor/": ("provisioner.api", "provisioner.cli", "provisioner.client", "provisioner.lab"),
    "api/": ("provisioner.cli", "provisioner.drivers", "provisioner.lab", "provisioner.client"),
    "cli/": (*_STORE, "provisioner.conductor", "provisioner.api", "provisioner.drivers", "provisioner.auth"),
    "gitops/": (*_STORE, "provisioner.conductor", "provisioner.api", "provisioner.drivers", "provisioner.cli"),
    "lab/": (*_STORE, "provisioner.conductor", "provisioner.api", "provisioner.cli"),
    # the ground floor and the data layer import nothing above them
    "crud.py": (*_UPPER, "provisioner.drivers", "provisioner.lab"),
    "host_json.py": (*_UPPER, "provisioner.drivers", "provisioner.lab"),
    "models.py": (*_UPPER, "provisioner.drivers", "provisioner.lab", "provisioner.crud"),
    "schemas.py": (*_UPPER, "provisioner.drivers", "provisioner.lab", "provisioner.crud", "provisioner.db"),
    "lifecycle.py": (*_UPPER, "provisioner.drivers", "provisioner.lab"),
    "settings.py": ("provisioner.",),
    "errors.py": ("provisioner.",),
    "states.py": ("provisioner.",),
}
# Reviewed exceptions, each with its reason. The list may shrink; a new entry needs a reason here.
ALLOWED: dict[tuple[str, str], str] = {
    ("cli/serve.py", "provisioner.server"): "`prov serve` starts the server processes (imported only when run)",
    ("cli/virt.py", "provisioner.drivers.virt.preflight"):
        "`prov virt check` without a host checks the machine the CLI runs on, with no controller",
    ("cli/virt.py", "provisioner.drivers.virt.libvirt"):
        "the local check asks the local libvirt for its domain capabilities",
}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from provisioner import crud`` names the module in the alias
            if node.module == "provisioner":
                found += [(node.lineno, f"provisioner.{a.name}") for a in node.names]
    return found


def _rule_for(rel: str) -> tuple[str, tuple[str, ...]] | None:
    for prefix, banned in RULES.items():
        if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix)):
            return prefix, banned
    return None


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "playbooks" not in p.parts and "templates" not in p.parts)


def test_no_import_runs_up_a_layer() -> None:
    bad: list[str] = []
    for path in _sources():
        rel = path.relative_to(PKG).as_posix()
        rule = _rule_for(rel)
        if rule is None:
            continue
        for lineno, name in _imports(ast.parse(path.read_text())):
            if any(name == b or name.startswith(b if b.endswith(".") else b + ".") or name == b.rstrip(".")
                   for b in rule[1]) and not any((rel, n) in ALLOWED for n in (name, name.rsplit(".", 1)[0])):
                bad.append(f"provisioner/{rel}:{lineno} imports {name}")
    assert not bad, "imports that run up a layer (docs/architecture.md):\n" + "\n".join(bad)


def test_nothing_in_the_package_imports_the_tests() -> None:
    bad = [f"{p.relative_to(PKG.parent)}:{ln} imports {n}" for p in _sources()
           for ln, n in _imports(ast.parse(p.read_text())) if n == "tests" or n.startswith("tests.")]
    assert not bad, "\n".join(bad)


def test_no_importlib_back_channels() -> None:
    bad: list[str] = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("import_module", "find_spec"):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno} uses {node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module in ("importlib", "importlib.util") and any(
                    a.name in ("import_module", "find_spec") for a in node.names):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno} imports {node.module}")
    assert not bad, "importlib back-channels hide edges from the import graph:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(RULES))
def test_every_layer_of_the_rules_exists(layer: str) -> None:
    assert (PKG / layer.rstrip("/")).exists(), f"rule for provisioner/{layer}, which does not exist"
