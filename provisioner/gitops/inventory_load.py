"""Reading an inventory: every problem of every file in one pass, each at file:line.

``prov inventory validate`` used to stop at the first duplicate or unknown reference, so
three mistakes took three runs (issue 19, item 3). Here each file is parsed through
:mod:`provisioner.gitops.yamlsafe`; a file whose schema check fails still lends its valid
entries to the cross-file checks (duplicate names, MACs and BMC endpoints, unknown
racks and profiles), and a name declared by an invalid entry is not reported again as
"unknown" where it is used. Everything found is raised at once as one InventoryError
whose ``problems`` list holds each {file, line, field, reason}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from provisioner.gitops import yamlsafe
from provisioner.gitops.inventory import (
    Defaults,
    HostIn,
    Inventory,
    InventoryDoc,
    InventoryError,
    Lines,
    Origin,
    ProfileIn,
    RackIn,
    apply_defaults,
    profile_external,
)

_SECTIONS: dict[str, type[BaseModel]] = {"profiles": ProfileIn, "racks": RackIn, "hosts": HostIn}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str  # the path inside the file, e.g. hosts[1].nics[0].mac ("" for the file as a whole)
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field + ': ' if self.field else ''}{self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _File:
    rel: str
    order: int
    doc: InventoryDoc | None = None
    lines: Lines = field(default_factory=lambda: Lines({}))
    invalid: dict[str, set[str]] = field(default_factory=dict)  # section -> names of entries that failed
    # section -> the file's index of each salvaged entry (entries that failed are left out)
    index: dict[str, list[int]] = field(default_factory=dict)

    def at(self, section: str, i: int) -> int:
        """The position in the file of the i-th valid entry of ``section``."""
        positions = self.index.get(section)
        return positions[i] if positions is not None else i


def fmt_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _reason(err: Any) -> str:
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg


def _salvage(data: dict[str, Any]) -> tuple[InventoryDoc, dict[str, set[str]], dict[str, list[int]]]:
    """The entries of a file that are valid on their own (and where they are), and the names of
    those that are not."""
    valid: dict[str, list[Any]] = {}
    invalid: dict[str, set[str]] = {}
    index: dict[str, list[int]] = {}
    for section, model in _SECTIONS.items():
        items = data.get(section)
        valid[section], index[section] = [], []
        for pos, item in enumerate(items if isinstance(items, list) else []):
            try:
                valid[section].append(model.model_validate(item))
                index[section].append(pos)
            except ValidationError:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    invalid.setdefault(section, set()).add(item["name"])
    try:
        defaults = Defaults.model_validate(data.get("defaults") or {})
    except ValidationError:
        defaults = Defaults()
    doc = InventoryDoc.model_construct(apiVersion="prov/v1", defaults=defaults, profiles=valid["profiles"],
                                       racks=valid["racks"], hosts=valid["hosts"])
    return doc, invalid, index


def _parse(f: _File, text: str, problems: list[Problem]) -> None:
    try:
        loaded = yamlsafe.parse(text)
    except yamlsafe.YamlError as exc:
        problems.append(Problem(f.rel, exc.line, "", exc.reason))
        return
    f.lines = Lines(loaded.lines)
    data = {} if loaded.data is None else loaded.data
    if not isinstance(data, dict):
        problems.append(Problem(f.rel, f.lines.line(()), "", "an inventory file must be a mapping"))
        return
    try:
        f.doc = InventoryDoc.model_validate(data)
        return
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(e["loc"])
            problems.append(Problem(f.rel, f.lines.line(loc), fmt_path(loc), _reason(e)))
    f.doc, f.invalid, f.index = _salvage(data)


def parse_document(text: str, filename: str) -> InventoryDoc:
    """One file -> document, or InventoryError at file:line (yamlsafe's bounds included)."""
    problems: list[Problem] = []
    f = _File(filename, 0)
    _parse(f, text, problems)
    if problems:
        raise _error(problems)
    assert f.doc is not None
    return f.doc


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise InventoryError(location=str(path), reason="no .yaml files in this directory",
                                 errors=[f"{path}: no .yaml files in this directory"],
                                 problems=[Problem(str(path), 0, "", "no .yaml files in this directory").to_dict()])
        return files
    if not path.exists():
        raise InventoryError(location=str(path), reason="no such file or directory",
                             errors=[f"{path}: no such file or directory"],
                             problems=[Problem(str(path), 0, "", "no such file or directory").to_dict()])
    return [path]


def _display(f: Path) -> str:
    """A file's name as the operator typed it: relative to the working directory when inside it."""
    try:
        return str(f.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(f)


def _error(problems: list[Problem]) -> InventoryError:
    first = problems[0]
    reason = f"{first.field}: {first.reason}" if first.field else first.reason
    return InventoryError(location=f"{first.file}:{first.line}", reason=reason,
                          errors=[str(p) for p in problems], problems=[p.to_dict() for p in problems])


class _Checker:
    """The cross-file checks, each problem noted and the check going on."""

    def __init__(self, inv: Inventory, problems: list[Problem]) -> None:
        self.inv, self.problems = inv, problems
        self.macs: dict[str, str] = {}
        self.bmcs: dict[tuple[str, int | None], str] = {}
        self.invalid: dict[str, set[str]] = {}

    def bad(self, f: _File, loc: tuple[Any, ...], reason: str) -> None:
        self.problems.append(Problem(f.rel, f.lines.line(loc), fmt_path(loc), reason))

    def named(self, f: _File, section: str, i: int, name: str, kind: str) -> bool:
        """Register an entry's name; False (and a problem) when another entry has it already."""
        key = f"{section}/{name}"
        if key in self.inv.origin:
            self.bad(f, (section, i, "name"), f"duplicate {kind} {name!r} (first at {self.inv.origin[key]})")
            return False
        self.inv.origin[key] = Origin(f.rel, f.lines, (section, i))
        return True

    def host(self, f: _File, i: int, h: HostIn) -> None:
        ok = True
        if h.rack and h.rack not in self.inv.racks and h.rack not in self.invalid.get("racks", set()):
            self.bad(f, ("hosts", i, "rack"), f"unknown rack {h.rack!r}")
            ok = False
        if (h.profile and h.profile not in self.inv.profiles and not profile_external(h.profile)
                and h.profile not in self.invalid.get("profiles", set())):
            self.bad(f, ("hosts", i, "profile"), f"unknown profile {h.profile!r}")
            ok = False
        for j, nic in enumerate(h.nics):
            if nic.mac in self.macs:
                self.bad(f, ("hosts", i, "nics", j, "mac"), f"{nic.mac} already used by {self.macs[nic.mac]}")
                ok = False
            else:
                self.macs[nic.mac] = h.name
        if h.bmc and h.bmc.address:
            key = (h.bmc.address, h.bmc.port)
            if key in self.bmcs:
                self.bad(f, ("hosts", i, "bmc", "address"),
                         f"{h.bmc.address}:{h.bmc.port or 'default'} already used by {self.bmcs[key]}")
                ok = False
            else:
                self.bmcs[key] = h.name
        if sum(1 for n in h.nics if n.boot) > 1:
            self.bad(f, ("hosts", i, "nics"), "more than one boot NIC")
            ok = False
        if ok:
            self.inv.hosts[h.name] = h


def load_inventory(path: str | Path) -> Inventory:
    """Parse, merge and cross-check an inventory file or directory (every problem at once)."""
    root = Path(path)
    inv = Inventory(base=root if root.is_dir() else root.parent)
    problems: list[Problem] = []
    files: list[_File] = []
    for n, p in enumerate(_files(root)):
        f = _File(_display(p), n)
        files.append(f)
        try:
            text = yamlsafe.read_text(p)
        except yamlsafe.YamlError as exc:  # too big or not UTF-8: refused before parsing
            problems.append(Problem(f.rel, exc.line, "", exc.reason))
            continue
        except OSError as exc:
            problems.append(Problem(f.rel, 0, "", f"cannot read: {exc.strerror or exc}"))
            continue
        _parse(f, text, problems)

    docs = [f for f in files if f.doc is not None]
    defaults = Defaults()
    for f in docs:
        assert f.doc is not None
        for k in f.doc.defaults.model_fields_set:
            setattr(defaults, k, getattr(f.doc.defaults, k))
    check = _Checker(inv, problems)
    for f in docs:
        for section, names in f.invalid.items():
            check.invalid.setdefault(section, set()).update(names)
    for f in docs:
        assert f.doc is not None
        for i, prof in enumerate(f.doc.profiles):
            if check.named(f, "profiles", f.at("profiles", i), prof.name, "profile"):
                inv.profiles[prof.name] = prof
        for i, r in enumerate(f.doc.racks):
            if check.named(f, "racks", f.at("racks", i), r.name, "rack"):
                inv.racks[r.name] = r
    for f in docs:
        assert f.doc is not None
        for i, h in enumerate(f.doc.hosts):
            if check.named(f, "hosts", f.at("hosts", i), h.name, "host"):
                check.host(f, f.at("hosts", i), apply_defaults(h, defaults))
    if problems:
        order = {f.rel: f.order for f in files}
        problems.sort(key=lambda p: (order.get(p.file, 0), p.line))
        raise _error(problems)
    return inv

