"""The declarative inventory (``apiVersion: prov/v1``): its models and the merged Inventory.

Files are read by :mod:`provisioner.gitops.inventory_load` through
:mod:`provisioner.gitops.yamlsafe` (size, alias, depth, tag and duplicate-key bounds),
so a hostile file is refused at file:line, and every problem is reported in one run.

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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from provisioner.errors import InvalidInput
from provisioner.netspec import IpSettings, NetworkIn, problems, validation_error
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


class NicIn(IpSettings):
    """A NIC as the host API takes it; address & co. are the installed OS's (provisioner/netspec.py)."""

    model_config = ConfigDict(extra="forbid", strict=False)
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
    network: NetworkIn = Field(default_factory=NetworkIn)  # bonds and VLANs of the installed OS

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_hostname(v)

    @model_validator(mode="after")
    def _network(self) -> HostIn:
        found = problems(self.nics, self.network)  # the API's rules, located at file:line
        if found:
            raise validation_error("HostIn", found)
        return self


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

    def __init__(self, filename: str, lines: Lines, loc: tuple[Any, ...]) -> None:
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
    """Every problem found in an inventory: ``errors`` lists them as ``file:line: reason`` lines and
    ``problems`` as {file, line, field, reason}; the message is the first one."""

    code = "inventory_error"
    template = "{location}: {reason}"


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 1


class Lines:
    """Line numbers of one file by path (from the single bounded parse)."""

    def __init__(self, lines: dict[tuple[Any, ...], int]) -> None:
        self._map = lines

    def line(self, loc: tuple[Any, ...]) -> int:
        return _line_for(self._map, loc)


def load(path: str | Path) -> Inventory:
    """Parse, merge and cross-check an inventory file or directory (inventory_load.py)."""
    from provisioner.gitops.inventory_load import load_inventory

    return load_inventory(path)


def parse_document(text: str, filename: str) -> InventoryDoc:
    """One file -> document, or InventoryError at file:line (yamlsafe's bounds included)."""
    from provisioner.gitops.inventory_load import parse_document as parse

    return parse(text, filename)


def profile_external(name: str) -> bool:
    """Profiles not declared in the inventory must already exist on the controller: plan checks."""
    return os.environ.get("PROV_INVENTORY_STRICT_PROFILES", "1") != "1"


def apply_defaults(h: HostIn, d: Defaults) -> HostIn:
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
