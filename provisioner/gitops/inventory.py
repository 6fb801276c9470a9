"""The declarative inventory (``apiVersion: prov/v1``): parsing with file:line errors.

Files are read through :mod:`provisioner.gitops.yamlsafe` (size, alias, depth,
tag and duplicate-key bounds), so a hostile file is refused at file:line.

An inventory is one YAML file or a directory of them; documents are merged
(lists concatenated) and checked as a whole: duplicate names or MACs across
files, unknown profile/rack references and inline BMC passwords are rejected
before anything is planned. Host entries keep the API's host body shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provisioner.errors import InvalidInput
from provisioner.gitops import yamlsafe
from provisioner.validators import normalize_mac, validate_hostname

API_VERSION = "prov/v1"

DesiredState = Literal["available", "installed", "configured", "absent"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(_Strict):
    """Where a BMC password comes from. Exactly one of env / file / store."""

    env: str | None = None
    file: str | None = None
    store: str | None = None  # "<dir>/<name>": a file under PROV_SECRET_STORE

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        given = [k for k in ("env", "file", "store") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file, store")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}" if self.file else f"store:{self.store}"

    def resolve(self, base: Path) -> str:
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise InvalidInput(field="password.env", reason=f"environment variable {self.env} is not set")
            return value
        if self.file:
            path = (base / self.file) if not os.path.isabs(self.file) else Path(self.file)
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise InvalidInput(field="password.file", reason=f"cannot read {path}: {exc.strerror}") from None
        root = Path(os.environ.get("PROV_SECRET_STORE", "/etc/prov/secrets"))
        path = (root / str(self.store)).resolve()
        if root.resolve() not in path.parents:
            raise InvalidInput(field="password.store", reason="path leaves the secret store")
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise InvalidInput(field="password.store", reason=f"cannot read {path}: {exc.strerror}") from None


class BmcSpecIn(_Strict):
    kind: Literal["ipmi", "redfish", "libvirt", "manual"] = "ipmi"
    address: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    password: SecretRef | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("inline passwords are not allowed in git; use {env: VAR}, {file: PATH} or {store: NAME}")
        return v


class NicIn(_Strict):
    mac: str
    boot: bool = False
    name: str = ""
    ip: str | None = None

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        return normalize_mac(v)


class GuestIn(_Strict):
    name: str
    memory_mib: int = Field(ge=64)
    vcpus: int = Field(default=1, ge=1, le=512)
    virt_type: Literal["kvm", "qemu"] = "kvm"
    disk_gib: int = Field(default=10, ge=1)
    network: str = "default"
    mac: str | None = None
    state: Literal["present", "absent"] = "present"


class HostIn(_Strict):
    name: str
    rack: str | None = None
    u_position: int | None = Field(default=None, ge=1, le=100)
    nics: list[NicIn] = Field(default_factory=list)
    bmc: BmcSpecIn | None = None
    roles: list[str] = Field(default_factory=list)
    profile: str | None = None
    state: DesiredState = "available"
    playbooks: list[str] | None = None
    engine: Literal["docker", "podman", "none"] | None = None
    guests: list[GuestIn] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_hostname(v)


class RackIn(_Strict):
    name: str
    site: str = ""
    size_u: int = Field(default=42, ge=1, le=100)
    state: Literal["present", "absent"] = "present"


class ProfileIn(_Strict):
    name: str
    os_family: str = "debian"
    install_method: Literal["kickstart", "preseed", "autoinstall", "image"] = "preseed"
    kernel_url: str = ""
    initrd_url: str = ""
    image_url: str = ""
    image_checksum: str = ""
    template: str = ""
    kernel_args: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    playbooks: list[str] = Field(default_factory=list)
    container_engine: Literal["docker", "podman", "none"] = "docker"


class Defaults(_Strict):
    profile: str | None = None
    rack: str | None = None
    bmc: BmcSpecIn | None = None
    state: DesiredState | None = None
    engine: Literal["docker", "podman", "none"] | None = None
    playbooks: list[str] | None = None


class InventoryDoc(_Strict):
    apiVersion: Literal["prov/v1"]  # the YAML key is camelCase, as in Kubernetes manifests
    defaults: Defaults = Field(default_factory=Defaults)
    profiles: list[ProfileIn] = Field(default_factory=list)
    racks: list[RackIn] = Field(default_factory=list)
    hosts: list[HostIn] = Field(default_factory=list)


class Origin:
    """Where an object is declared; the line is looked up only when printed."""

    def __init__(self, filename: str, lines: _Lines, loc: tuple[Any, ...]) -> None:
        self.filename, self._lines, self._loc = filename, lines, loc

    def __str__(self) -> str:
        return f"{self.filename}:{self._lines.line(self._loc)}"


@dataclass
class Inventory:
    """The merged, validated inventory plus where each object came from."""

    profiles: dict[str, ProfileIn] = field(default_factory=dict)
    racks: dict[str, RackIn] = field(default_factory=dict)
    hosts: dict[str, HostIn] = field(default_factory=dict)
    origin: dict[str, Origin] = field(default_factory=dict)  # "hosts/web01" -> file.yaml:12
    base: Path = field(default_factory=Path.cwd)


class InventoryError(InvalidInput):
    code = "inventory_error"
    template = "{location}: {reason}"


def _fmt_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 1


def _reason(err: Any) -> str:
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg


def _parse(text: str, filename: str) -> tuple[InventoryDoc, _Lines]:
    try:
        loaded = yamlsafe.parse(text)
    except yamlsafe.YamlError as exc:
        raise InventoryError(location=f"{filename}:{exc.line}", reason=exc.reason) from None
    lines = _Lines(loaded.lines)
    data = {} if loaded.data is None else loaded.data
    if not isinstance(data, dict):
        raise InventoryError(location=f"{filename}:{lines.line(())}", reason="an inventory file must be a mapping")
    try:
        return InventoryDoc.model_validate(data), lines
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0]
        loc = tuple(first["loc"])
        raise InventoryError(
            location=f"{filename}:{lines.line(loc)}",
            reason=f"{_fmt_path(loc)}: {_reason(first)}",
            errors=[f"{filename}:{lines.line(tuple(e['loc']))}: {_fmt_path(tuple(e['loc']))}: {_reason(e)}"
                    for e in errs],
        ) from None


def parse_document(text: str, filename: str) -> InventoryDoc:
    """One file -> document, or InventoryError at file:line (yamlsafe's bounds included)."""
    return _parse(text, filename)[0]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise InventoryError(location=str(path), reason="no .yaml files in this directory")
        return files
    if not path.exists():
        raise InventoryError(location=str(path), reason="no such file or directory")
    return [path]


class _Lines:
    """Line numbers of one file by path (from the single bounded parse)."""

    def __init__(self, lines: dict[tuple[Any, ...], int]) -> None:
        self._map = lines

    def line(self, loc: tuple[Any, ...]) -> int:
        return _line_for(self._map, loc)


def _display(f: Path) -> str:
    """A file's name as the operator typed it: relative to the working directory when inside it."""
    try:
        return str(f.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(f)


def load(path: str | Path) -> Inventory:
    """Parse, merge and cross-check an inventory file or directory."""
    root = Path(path)
    inv = Inventory(base=root if root.is_dir() else root.parent)
    macs: dict[str, str] = {}
    bmcs: dict[tuple[str, int | None], str] = {}
    docs: list[tuple[str, InventoryDoc, _Lines]] = []
    for f in _files(root):
        rel = _display(f)
        try:
            text = yamlsafe.read_text(f)
        except yamlsafe.YamlError as exc:  # too big or not UTF-8: refused before parsing
            raise InventoryError(location=f"{rel}:{exc.line}", reason=exc.reason) from None
        except OSError as exc:
            raise InventoryError(location=rel, reason=f"cannot read: {exc.strerror or exc}") from None
        docs.append((rel, *_parse(text, rel)))

    defaults = Defaults()
    for _rel, doc, _lines in docs:
        for k in doc.defaults.model_fields_set:
            setattr(defaults, k, getattr(doc.defaults, k))

    def where(rel: str, lines: _Lines, *loc: Any) -> str:
        return f"{rel}:{lines.line(loc)}"

    def origin(rel: str, lines: _Lines, *loc: Any) -> Origin:
        return Origin(rel, lines, loc)

    for rel, doc, lines in docs:
        for i, p in enumerate(doc.profiles):
            if p.name in inv.profiles:
                raise InventoryError(location=where(rel, lines, "profiles", i, "name"),
                                     reason=f"profiles[{i}].name: duplicate profile {p.name!r} "
                                            f"(first at {inv.origin['profiles/' + p.name]})")
            inv.profiles[p.name] = p
            inv.origin[f"profiles/{p.name}"] = origin(rel, lines, "profiles", i)
        for i, r in enumerate(doc.racks):
            if r.name in inv.racks:
                raise InventoryError(location=where(rel, lines, "racks", i, "name"),
                                     reason=f"racks[{i}].name: duplicate rack {r.name!r} "
                                            f"(first at {inv.origin['racks/' + r.name]})")
            inv.racks[r.name] = r
            inv.origin[f"racks/{r.name}"] = origin(rel, lines, "racks", i)

    for rel, doc, lines in docs:
        for i, h in enumerate(doc.hosts):
            if h.name in inv.hosts:
                raise InventoryError(location=where(rel, lines, "hosts", i, "name"),
                                     reason=f"hosts[{i}].name: duplicate host {h.name!r} "
                                            f"(first at {inv.origin['hosts/' + h.name]})")
            h = _apply_defaults(h, defaults)
            if h.rack and h.rack not in inv.racks:
                raise InventoryError(location=where(rel, lines, "hosts", i, "rack"),
                                     reason=f"hosts[{i}].rack: unknown rack {h.rack!r}")
            if h.profile and h.profile not in inv.profiles and not _profile_external(h.profile):
                raise InventoryError(location=where(rel, lines, "hosts", i, "profile"),
                                     reason=f"hosts[{i}].profile: unknown profile {h.profile!r}")
            for j, nic in enumerate(h.nics):
                if nic.mac in macs:
                    raise InventoryError(location=where(rel, lines, "hosts", i, "nics", j, "mac"),
                                         reason=f"hosts[{i}].nics[{j}].mac: {nic.mac} already used by {macs[nic.mac]}")
                macs[nic.mac] = h.name
            if h.bmc and h.bmc.address:
                key = (h.bmc.address, h.bmc.port)
                if key in bmcs:
                    raise InventoryError(location=where(rel, lines, "hosts", i, "bmc", "address"),
                                         reason=f"hosts[{i}].bmc: {h.bmc.address}:{h.bmc.port or 'default'} "
                                                f"already used by {bmcs[key]}")
                bmcs[key] = h.name
            if sum(1 for n in h.nics if n.boot) > 1:
                raise InventoryError(location=where(rel, lines, "hosts", i, "nics"),
                                     reason=f"hosts[{i}].nics: more than one boot NIC")
            inv.hosts[h.name] = h
            inv.origin[f"hosts/{h.name}"] = origin(rel, lines, "hosts", i)
    return inv


def _profile_external(name: str) -> bool:
    """Profiles not declared in the inventory must already exist on the controller: plan checks."""
    return os.environ.get("PROV_INVENTORY_STRICT_PROFILES", "1") != "1"


def _apply_defaults(h: HostIn, d: Defaults) -> HostIn:
    updates: dict[str, Any] = {}
    given = h.model_fields_set
    if "profile" not in given and d.profile:
        updates["profile"] = d.profile
    if "rack" not in given and d.rack:
        updates["rack"] = d.rack
    if "state" not in given and d.state:
        updates["state"] = d.state
    if "engine" not in given and d.engine:
        updates["engine"] = d.engine
    if "playbooks" not in given and d.playbooks is not None:
        updates["playbooks"] = list(d.playbooks)
    if d.bmc is not None:
        base = d.bmc.model_dump(exclude_unset=True)
        mine = h.bmc.model_dump(exclude_unset=True) if h.bmc else {}
        if h.bmc is not None or "bmc" not in given:
            merged = {**base, **mine}
            if merged.get("address"):
                updates["bmc"] = BmcSpecIn.model_validate(merged)
    return h.model_copy(update=updates) if updates else h


def json_schema() -> dict[str, Any]:
    schema = InventoryDoc.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://prov.dev/schemas/inventory-v1.json"
    schema["title"] = "prov inventory (apiVersion prov/v1)"
    return schema
