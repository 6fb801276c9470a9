"""The API's request and response bodies (the Create/Update/Public ladder).

One definition per object, as in the FastAPI full-stack template: ``XBase``
(an SQLModel without a table) holds the fields the table and the API share,
with their column details; models.py's table ``X(XBase, table=True)`` adds the
id and what only the database keeps (secrets, bookkeeping); ``XCreate`` and
``XPublic`` here are the request body and the response. ``XUpdate`` restates
the fields as optional (test_models_schemas.py checks they keep the base's
constraints). Secrets live only in tables, so they cannot leak by accident:
``HostPublic`` has no password field at all, only ``bmc.password_set``.

Hosts have no base: their API shape (rack and profile by name, a nested BMC,
NICs, allowed events) is not the table's, and host_json.py derives the host
JSON from ``HostPublic`` instead. Request bodies forbid unknown fields, so a
typo is a 422 naming the field instead of being silently ignored. Column
lengths of fields the API does not validate (written by prov itself) are
``sa_type`` only, so responses are not refused over them.

Request bodies are strict (``_IN``; api/strict.py also validates every operator
body in pydantic's strict JSON mode): ``"623"`` or ``true`` is not a port, ``0``/``1``
is not a boolean. Text never holds control or bidirectional-control characters
(validators.text_problem), and single-line fields (site, URLs, kernel arguments,
BMC credentials, messages) no line break either: the Create/Update models check
them with ``field_validator(...)(one_line)``, responses do not (a value stored
before the rule must not fail a read).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import sqlmodel
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from sqlalchemy import JSON, Text
from sqlmodel import AutoString, SQLModel

from provisioner import states as S
from provisioner.netspec import BondIn, IpSettings, NetworkIn, VlanIn, problems, validation_error
from provisioner.validators import (
    Address,
    Hostname,
    IpAddress,
    Mac,
    NicName,
    Port,
    Slug,
    check_line,
    checksum,
    file_names,
    one_line,
)

T = TypeVar("T")

BmcKind = Literal["ipmi", "redfish", "libvirt", "manual"]
OsFamily = Literal["debian", "ubuntu", "rhel"]
InstallMethod = Literal["kickstart", "preseed", "autoinstall", "image"]
ContainerEngine = Literal["docker", "podman", "none"]
# The operator-driven events; install/configure/decommission have their own workflow endpoints.
OperatorEvent = Literal["maintain", "unmaintain", "abort"]

# Default management ports per BMC kind (IPMI: RMCP on UDP 623; Redfish: HTTPS).
DEFAULT_BMC_PORT = {"ipmi": 623, "redfish": 443}
# The kinds prov reaches over the network: a BMC of these kinds needs an address.
NETWORK_BMC_KINDS = frozenset(DEFAULT_BMC_PORT)
# Event.actor and AuditLog.actor columns: "token:<name> (<context>)" is cut to fit (api/deps.py).
ACTOR_MAX = 128

Role = Slug


_IN = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)
# Responses always carry every field, defaults or not: keep them "required" in the OpenAPI document.
_OUT = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)
_CHECKSUM = r"^$|^sha(256|512):[0-9a-fA-F]+$"


class _In(BaseModel):
    model_config = _IN


class PublicId(SQLModel):
    """``id`` of an ``XPublic``. Listed after ``XBase`` in the bases: pydantic orders fields from
    the last base to the first, so the id comes first, as the table's column does."""

    id: int


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int = Field(description="total number of rows matching the filters")
    limit: int
    offset: int


# --------------------------------------------------------------------------- racks
def validate_subnet(value: Any) -> str:
    """A network in CIDR form, ``10.99.0.0/24`` (IPv4 or IPv6) -> canonical text.

    Host bits set (``10.99.0.5/24``) are refused rather than masked: a typo in a boot agent's
    network would otherwise silently move a rack to another agent (issue 14)."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    v = check_line(value).strip()
    if "/" not in v:
        raise ValueError(f"not a network: {v!r} (a CIDR with its prefix length, e.g. 10.99.0.0/24)")
    try:
        return str(ipaddress.ip_network(v, strict=True))
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError(f"not a network: {v!r} (a CIDR, e.g. 10.99.0.0/24)") from None
    raise ValueError(f"{v!r} has host bits set; the network is {net}")


# A boot agent's network, and the network a rack's hosts boot from (``prov serve --role boot --network``).
Subnet = Annotated[str, BeforeValidator(validate_subnet)]


class RackBase(SQLModel):
    name: Slug = sqlmodel.Field(index=True, unique=True, sa_type=AutoString(63))
    site: str = sqlmodel.Field(default="", max_length=128)
    size_u: int = sqlmodel.Field(default=42, ge=1, le=100)
    # The provisioning network its hosts boot from: the boot agent serving it answers them (issue 14).
    network: Subnet | None = sqlmodel.Field(default=None, sa_type=AutoString(64))


class RackCreate(RackBase):
    model_config = _IN  # type: ignore[assignment]
    _lines = field_validator("site")(one_line)


class RackUpdate(_In):
    site: str | None = Field(default=None, max_length=128)
    size_u: int | None = Field(default=None, ge=1, le=100)
    network: Subnet | None = None
    _lines = field_validator("site")(one_line)


class RackPublic(RackBase, PublicId):
    model_config = _OUT  # type: ignore[assignment]
    host_count: int = 0
    created_at: datetime


# --------------------------------------------------------------------------- profiles
class ProfileBase(SQLModel):
    """An OS profile: how a host gets its OS and what runs on it afterwards."""

    name: Slug = sqlmodel.Field(index=True, unique=True, sa_type=AutoString(63))
    os_family: OsFamily = sqlmodel.Field(default="debian", sa_type=AutoString(32))
    install_method: InstallMethod = sqlmodel.Field(default="preseed", sa_type=AutoString(32))
    kernel_url: str = sqlmodel.Field(default="", max_length=2048)
    initrd_url: str = sqlmodel.Field(default="", max_length=2048)
    image_url: str = sqlmodel.Field(default="", max_length=2048)
    image_checksum: str = sqlmodel.Field(default="", max_length=160, schema_extra={"pattern": _CHECKSUM})
    template: str = sqlmodel.Field(default="", max_length=255)  # overrides the method's default template
    kernel_args: str = sqlmodel.Field(default="", max_length=2048)
    params: dict[str, Any] = sqlmodel.Field(default_factory=dict, sa_type=JSON, nullable=False)
    playbooks: list[str] = sqlmodel.Field(default_factory=list, max_length=64, sa_type=JSON, nullable=False)
    container_engine: ContainerEngine = sqlmodel.Field(default="docker", sa_type=AutoString(16))


_PROFILE_LINES = ("kernel_url", "initrd_url", "image_url", "kernel_args")


class ProfileCreate(ProfileBase):
    model_config = _IN  # type: ignore[assignment]
    _lines = field_validator(*_PROFILE_LINES)(one_line)
    _names = field_validator("template", "playbooks")(file_names)
    _checksum = field_validator("image_checksum", mode="before")(checksum)


class ProfileUpdate(_In):
    os_family: OsFamily | None = None
    install_method: InstallMethod | None = None
    kernel_url: str | None = Field(default=None, max_length=2048)
    initrd_url: str | None = Field(default=None, max_length=2048)
    image_url: str | None = Field(default=None, max_length=2048)
    image_checksum: str | None = Field(default=None, max_length=160, pattern=_CHECKSUM)
    template: str | None = Field(default=None, max_length=255)
    kernel_args: str | None = Field(default=None, max_length=2048)
    params: dict[str, Any] | None = None
    playbooks: list[str] | None = Field(default=None, max_length=64)
    container_engine: ContainerEngine | None = None
    _lines = field_validator(*_PROFILE_LINES)(one_line)
    _names = field_validator("template", "playbooks")(file_names)
    _checksum = field_validator("image_checksum", mode="before")(checksum)


class ProfilePublic(ProfileBase, PublicId):
    model_config = _OUT  # type: ignore[assignment]
    created_at: datetime


# --------------------------------------------------------------------------- NICs and BMC
class _NicId(_In):
    mac: Mac
    name: NicName = Field(default="", max_length=32)
    boot: bool = False
    ip: IpAddress | None = Field(default=None, description="DHCP reservation (what the host gets while it "
                                                          "network-boots)")


class NicIn(IpSettings, _NicId):
    """A NIC; ``address`` & co. configure it statically in the installed OS (provisioner/netspec.py)."""

    model_config = _IN


class NicPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    mac: str
    name: str
    boot: bool
    ip: str | None
    address: str | None
    gateway: str | None
    nameservers: list[str]
    search: list[str]
    mtu: int | None


class NetworkOut(BaseModel):
    """``network`` of a host: its bonds and VLANs (the columns ``network_bonds``, ``network_vlans``)."""

    bonds: list[BondIn]
    vlans: list[VlanIn]


class BmcIn(_In):
    """How prov reaches the host's BMC. ``ipmi`` and ``redfish`` need an ``address``; ``manual``
    is a host powered by hand (prov asks the operator); ``libvirt`` a guest of a KVM host."""

    kind: BmcKind = "ipmi"
    address: Address | None = Field(default=None, validate_default=True)
    port: Port | None = None
    username: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=256, description="write-only; stored encrypted")
    options: dict[str, Any] = Field(default_factory=dict)
    _lines = field_validator("username", "password")(one_line)

    @field_validator("address")
    @classmethod
    def _address_needed(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if v is None and kind in NETWORK_BMC_KINDS:
            raise ValueError(f"required when kind is {kind!r} (kind 'manual': a host powered by hand)")
        return v


class BmcUpdate(_In):
    kind: BmcKind | None = None
    address: Address | None = None
    port: Port | None = None
    username: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=256, description="write-only; '' clears it")
    options: dict[str, Any] | None = None
    _lines = field_validator("username", "password")(one_line)


class BmcPublic(BaseModel):
    kind: str
    address: str | None
    port: int | None
    username: str | None
    password_set: bool
    options: dict[str, Any]
    reachable: bool | None
    error: str | None


def _check_nics(nics: list[NicIn] | None) -> list[NicIn] | None:
    if nics is None:
        return None
    macs = [n.mac for n in nics]
    dup = sorted({m for m in macs if macs.count(m) > 1})
    if dup:
        raise ValueError(f"MAC {dup[0]} listed twice")
    if sum(1 for n in nics if n.boot) > 1:
        raise ValueError("only one NIC can be the boot NIC")
    if nics and not any(n.boot for n in nics):
        nics[0].boot = True  # one NIC must boot; the first one unless told otherwise
    return nics


# --------------------------------------------------------------------------- hosts
class HostCreate(_In):
    """``{"name": "web01", "rack": "r1", "nics": [{"mac": ..., "boot": true}], "bmc": {...},
    "profile": "debian12", "roles": ["docker"]}`` - rack and profile by name."""

    name: Hostname
    rack: Slug | None = None
    u_position: int | None = Field(default=None, ge=1, le=100)
    roles: list[Role] = Field(default_factory=list, max_length=32)
    profile: Slug | None = None
    nics: list[NicIn] = Field(default_factory=list, max_length=16)
    bmc: BmcIn = Field(default_factory=lambda: BmcIn(kind="manual"), description=(
        "how prov reaches the BMC; none given: kind 'manual', a host powered by hand (prov asks the "
        "operator, verify checks nothing), as MAAS does for a machine without a power driver"))
    netboot: bool = False
    ip_address: IpAddress | None = Field(default=None, description="where prov reaches the installed host "
                                                                   "(default: the boot NIC's ip)")
    network: NetworkIn = Field(default_factory=NetworkIn, description="bonds and VLANs of the installed OS")

    @field_validator("nics")
    @classmethod
    def _nics(cls, v: list[NicIn]) -> list[NicIn]:
        return _check_nics(v) or []

    @model_validator(mode="after")
    def _network(self) -> HostCreate:
        found = problems(self.nics, self.network)
        if found:
            raise validation_error("HostCreate", found)
        return self

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class HostUpdate(_In):
    """Every field optional; ``nics`` replaces the whole NIC list; ``rack``/``profile`` null detaches."""

    rack: Slug | None = None
    u_position: int | None = Field(default=None, ge=1, le=100)
    roles: list[Role] | None = Field(default=None, max_length=32)
    profile: Slug | None = None
    nics: list[NicIn] | None = Field(default=None, max_length=16)
    bmc: BmcUpdate | None = None
    netboot: bool | None = None
    ip_address: IpAddress | None = None
    network: NetworkIn | None = Field(default=None, description="replaces the bonds and VLANs; checked with "
                                                                "the NICs (these or the stored ones)")

    @field_validator("nics")
    @classmethod
    def _nics(cls, v: list[NicIn] | None) -> list[NicIn] | None:
        return _check_nics(v)

    @model_validator(mode="after")
    def _dedupe(self) -> HostUpdate:
        if self.roles is not None:
            self.roles = list(dict.fromkeys(self.roles))
        # Both given: checked here, with their locations; one alone is checked with the stored other (crud).
        if self.nics is not None and self.network is not None:
            found = problems(self.nics, self.network)
            if found:
                raise validation_error("HostUpdate", found)
        return self


class HostPublic(BaseModel):
    id: int
    name: str
    rack: str | None
    u_position: int | None
    roles: list[str]
    profile: str | None
    state: str
    state_entered_at: datetime
    state_deadline: datetime | None
    maintenance_from: str | None
    last_error: str | None
    power_state: str
    power_checked_at: datetime | None
    bmc: BmcPublic
    nics: list[NicPublic]
    network: NetworkOut
    netboot: bool
    ip_address: str | None
    installed_at: datetime | None
    version: int
    allowed_events: list[str]
    created_at: datetime
    updated_at: datetime


class TransitionRequest(_In):
    event: OperatorEvent
    message: str = Field(default="", max_length=1024)
    _lines = field_validator("message")(one_line)


# --------------------------------------------------------------------------- tasks and events
class TaskBase(SQLModel):
    """A unit of work the conductor runs; persisted step by step so it can resume."""

    kind: str = sqlmodel.Field(sa_type=AutoString(32), index=True)  # install | power | configure | verify | ...
    host_id: int | None = sqlmodel.Field(default=None, foreign_key="host.id", index=True, ondelete="SET NULL")
    rack_id: int | None = sqlmodel.Field(default=None, foreign_key="rack.id", ondelete="SET NULL")
    status: str = sqlmodel.Field(default=S.TASK_PENDING, sa_type=AutoString(16), index=True)
    step: str = sqlmodel.Field(default="", sa_type=AutoString(64))  # the workflow step in progress (for resume)
    progress: int = sqlmodel.Field(default=0)  # 0..100
    params: dict[str, Any] = sqlmodel.Field(default_factory=dict, sa_type=JSON, nullable=False)
    result: dict[str, Any] = sqlmodel.Field(default_factory=dict, sa_type=JSON, nullable=False)
    error: str | None = sqlmodel.Field(default=None, sa_type=Text)


class TaskPublic(TaskBase, PublicId):
    model_config = _OUT  # type: ignore[assignment]
    # Not in TaskBase: the table keeps its owner and heartbeat columns before these.
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventBase(SQLModel):
    """One line of a host's history (append-only: rows are never updated or deleted)."""

    host_id: int | None = sqlmodel.Field(default=None, foreign_key="host.id", index=True, ondelete="CASCADE")
    from_state: str | None = sqlmodel.Field(default=None, sa_type=AutoString(32))
    to_state: str | None = sqlmodel.Field(default=None, sa_type=AutoString(32))
    event: str = sqlmodel.Field(sa_type=AutoString(64))
    message: str = sqlmodel.Field(default="", sa_type=Text, nullable=False)
    actor: str = sqlmodel.Field(default="system", sa_type=AutoString(ACTOR_MAX))
    task_id: int | None = sqlmodel.Field(default=None, foreign_key="task.id", ondelete="SET NULL")


class EventPublic(EventBase, PublicId):
    model_config = _OUT  # type: ignore[assignment]
    created_at: datetime


HOST_SORT_KEYS = ("name", "state", "created_at", "updated_at", "power_state", "id")
HOST_STATES = tuple(sorted(S.ALL))
