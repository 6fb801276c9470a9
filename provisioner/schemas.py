"""The API's request and response bodies (the Create/Update/Public ladder).

Tables live in models.py; these are plain pydantic models so that secrets can
never leak by accident: ``HostPublic`` has no password field at all, only
``bmc.password_set``. Request bodies forbid unknown fields, so a typo is a 422
naming the field instead of being silently ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from provisioner import states as S
from provisioner.validators import Address, Hostname, IpAddress, Mac, Port, Slug

T = TypeVar("T")

BmcKind = Literal["ipmi", "redfish", "libvirt", "manual"]
InstallMethod = Literal["kickstart", "preseed", "autoinstall", "image"]
ContainerEngine = Literal["docker", "podman", "none"]
# The operator-driven events; install/configure/decommission have their own workflow endpoints.
OperatorEvent = Literal["maintain", "unmaintain", "abort"]

# Default management ports per BMC kind (IPMI: RMCP on UDP 623; Redfish: HTTPS).
DEFAULT_BMC_PORT = {"ipmi": 623, "redfish": 443}

Role = Slug


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int = Field(description="total number of rows matching the filters")
    limit: int
    offset: int


# --------------------------------------------------------------------------- racks
class RackCreate(_In):
    name: Slug
    site: str = Field(default="", max_length=128)
    size_u: int = Field(default=42, ge=1, le=100)


class RackUpdate(_In):
    site: str | None = Field(default=None, max_length=128)
    size_u: int | None = Field(default=None, ge=1, le=100)


class RackPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    site: str
    size_u: int
    host_count: int = 0
    created_at: datetime


# --------------------------------------------------------------------------- profiles
class ProfileCreate(_In):
    name: Slug
    os_family: Literal["debian", "ubuntu", "rhel"] = "debian"
    install_method: InstallMethod = "preseed"
    kernel_url: str = Field(default="", max_length=2048)
    initrd_url: str = Field(default="", max_length=2048)
    image_url: str = Field(default="", max_length=2048)
    image_checksum: str = Field(default="", max_length=160, pattern=r"^$|^sha(256|512):[0-9a-fA-F]+$")
    template: str = Field(default="", max_length=255)
    kernel_args: str = Field(default="", max_length=2048)
    params: dict[str, Any] = Field(default_factory=dict)
    playbooks: list[str] = Field(default_factory=list, max_length=64)
    container_engine: ContainerEngine = "docker"


class ProfileUpdate(_In):
    os_family: Literal["debian", "ubuntu", "rhel"] | None = None
    install_method: InstallMethod | None = None
    kernel_url: str | None = Field(default=None, max_length=2048)
    initrd_url: str | None = Field(default=None, max_length=2048)
    image_url: str | None = Field(default=None, max_length=2048)
    image_checksum: str | None = Field(default=None, max_length=160, pattern=r"^$|^sha(256|512):[0-9a-fA-F]+$")
    template: str | None = Field(default=None, max_length=255)
    kernel_args: str | None = Field(default=None, max_length=2048)
    params: dict[str, Any] | None = None
    playbooks: list[str] | None = Field(default=None, max_length=64)
    container_engine: ContainerEngine | None = None


class ProfilePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    os_family: str
    install_method: str
    kernel_url: str
    initrd_url: str
    image_url: str
    image_checksum: str
    template: str
    kernel_args: str
    params: dict[str, Any]
    playbooks: list[str]
    container_engine: str
    created_at: datetime


# --------------------------------------------------------------------------- NICs and BMC
class NicIn(_In):
    mac: Mac
    name: str = Field(default="", max_length=32)
    boot: bool = False
    ip: IpAddress | None = None


class NicPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    mac: str
    name: str
    boot: bool
    ip: str | None


class BmcIn(_In):
    kind: BmcKind = "ipmi"
    address: Address | None = None
    port: Port | None = None
    username: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=256, description="write-only; stored encrypted")
    options: dict[str, Any] = Field(default_factory=dict)


class BmcUpdate(_In):
    kind: BmcKind | None = None
    address: Address | None = None
    port: Port | None = None
    username: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=256, description="write-only; '' clears it")
    options: dict[str, Any] | None = None


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
    bmc: BmcIn = Field(default_factory=BmcIn)
    netboot: bool = False
    ip_address: IpAddress | None = None

    @field_validator("nics")
    @classmethod
    def _nics(cls, v: list[NicIn]) -> list[NicIn]:
        return _check_nics(v) or []

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

    @field_validator("nics")
    @classmethod
    def _nics(cls, v: list[NicIn] | None) -> list[NicIn] | None:
        return _check_nics(v)

    @model_validator(mode="after")
    def _dedupe(self) -> HostUpdate:
        if self.roles is not None:
            self.roles = list(dict.fromkeys(self.roles))
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


# --------------------------------------------------------------------------- tasks and events
class TaskPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    host_id: int | None
    rack_id: int | None
    status: str
    step: str
    progress: int
    params: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    host_id: int | None
    from_state: str | None
    to_state: str | None
    event: str
    message: str
    actor: str
    task_id: int | None
    created_at: datetime


HOST_SORT_KEYS = ("name", "state", "created_at", "updated_at", "power_state", "id")
HOST_STATES = tuple(sorted(S.ALL))
