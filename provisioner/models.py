"""SQL tables (SQLModel).

The ladder follows the FastAPI full-stack template: ``XBase`` (schemas.py)
holds the fields the table and the API share, ``X(XBase, table=True)`` here
adds the id and what only the database keeps (secrets, bookkeeping), and
schemas.py's ``XCreate``/``XPublic`` are the API's bodies (never secrets).
Validation of MACs, hostnames and addresses lives in validators.py so the API,
the CLI import and GitOps inventory all reject the same things.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from provisioner import states as S
from provisioner.schemas import EventBase, ProfileBase, RackBase, TaskBase


def utcnow() -> datetime:
    # Aware UTC: sqlmodel's UTCDateTime columns refuse naive datetimes on write and
    # return aware UTC on read, on SQLite and PostgreSQL alike.
    return datetime.now(UTC)


def _json_list() -> Column[Any]:
    # server default: rows made before the column existed read as an empty list (migration 0005)
    return Column(JSON, nullable=False, server_default="[]")


class RowId(SQLModel):
    """The primary key. Listed after ``XBase`` in a table's bases: pydantic (and so SQLModel)
    orders fields from the last base to the first, so ``id`` stays the first column."""

    id: int | None = Field(default=None, primary_key=True)


# --------------------------------------------------------------------------- racks
class Rack(RackBase, RowId, table=True):
    created_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- profiles
class Profile(ProfileBase, RowId, table=True):
    created_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- hosts
class Host(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("bmc_address", "bmc_port", name="uq_host_bmc_endpoint"),
        Index("ix_host_state", "state"),
        # listing filters and sort keys; sorts add ``id`` as the tie-break, so the index
        # carries it too and a page is an index walk, not a sort of every row (bench/api).
        # No index on power_state: three values, so walking the sort index and filtering wins.
        Index("ix_host_updated_at", "updated_at", "id"),
        Index("ix_host_created_at", "created_at", "id"),
        Index("ix_host_profile_id", "profile_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=63)
    rack_id: int | None = Field(default=None, foreign_key="rack.id", index=True, ondelete="RESTRICT")
    u_position: int | None = None
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    profile_id: int | None = Field(default=None, foreign_key="profile.id", ondelete="RESTRICT")

    # lifecycle (moved only by lifecycle.advance)
    state: str = Field(default=S.ENROLLED, max_length=32)
    state_entered_at: datetime = Field(default_factory=utcnow)
    state_deadline: datetime | None = None
    maintenance_from: str | None = Field(default=None, max_length=32)
    version: int = Field(default=0)  # compare-and-set counter
    last_error: str | None = Field(default=None, sa_column=Column(Text))

    # power / BMC.  kind: ipmi | redfish | libvirt | manual
    bmc_kind: str = Field(default="ipmi", max_length=16)
    bmc_address: str | None = Field(default=None, max_length=255)
    bmc_port: int | None = None
    bmc_username: str | None = Field(default=None, max_length=64)
    bmc_password_enc: str | None = Field(default=None, sa_column=Column(Text))  # Fernet, never plain
    # driver options: privilege, cipher_suite, verify_tls, ca_path, system_id, libvirt_uri, domain...
    bmc_options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    power_state: str = Field(default=S.POWER_UNKNOWN, max_length=16)
    power_checked_at: datetime | None = None
    bmc_reachable: bool | None = None  # None: never asked; False: flagged by power sync
    bmc_error: str | None = Field(default=None, sa_column=Column(Text))

    # network boot / install
    netboot: bool = Field(default=False)  # does DHCP/iPXE hand this host an installer?
    install_token_hash: str | None = Field(default=None, max_length=128)
    install_token_expires: datetime | None = None
    # The same token, Fernet-encrypted: a boot-script re-fetch renders it again (conductor/netboot.py)
    install_token_enc: str | None = Field(default=None, sa_column=Column(Text))
    ip_address: str | None = Field(default=None, max_length=64)
    ssh_host_key: str | None = Field(default=None, sa_column=Column(Text))
    installed_at: datetime | None = None

    virt_report: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    # installed OS network beyond the NICs' own addresses (provisioner/netspec.py: BondIn, VlanIn dicts)
    network_bonds: list[dict[str, Any]] = Field(default_factory=list, sa_column=_json_list())
    network_vlans: list[dict[str, Any]] = Field(default_factory=list, sa_column=_json_list())


class Nic(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    host_id: int = Field(foreign_key="host.id", index=True, ondelete="CASCADE")
    mac: str = Field(index=True, unique=True, max_length=17)  # lower-case aa:bb:cc:dd:ee:ff
    name: str = Field(default="", max_length=32)
    boot: bool = Field(default=False)
    ip: str | None = Field(default=None, max_length=64)  # DHCP reservation
    # static IPv4 of the installed OS (netspec.IpSettings); all empty: DHCP on the boot NIC
    address: str | None = Field(default=None, max_length=64)  # CIDR, 10.0.0.5/24
    gateway: str | None = Field(default=None, max_length=64)
    nameservers: list[str] = Field(default_factory=list, sa_column=_json_list())
    search: list[str] = Field(default_factory=list, sa_column=_json_list())
    mtu: int | None = None


# --------------------------------------------------------------------------- tasks
class Task(TaskBase, RowId, table=True):
    owner: str | None = Field(default=None, max_length=128)  # controller instance running it
    heartbeat_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


# --------------------------------------------------------------------------- history
class Event(EventBase, RowId, table=True):
    created_at: datetime = Field(default_factory=utcnow, index=True)
    # Set when the host is deleted (crud.delete_host detaches its rows: host_id NULL), so a
    # deleted host's history stays readable by name (GET /api/v1/hosts/{name}/events).
    host_name: str | None = Field(default=None, max_length=63, index=True)


# --------------------------------------------------------------------------- auth
class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    token_hash: str = Field(index=True, unique=True, max_length=128)  # sha256 hex of the token
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked: bool = Field(default=False)
    # Space-separated, among auth.SCOPES (admin | operator | viewer | installer); rows made
    # before scopes existed could do everything, so they are admin (migration 0004).
    scopes: str = Field(default="admin", max_length=128, sa_column_kwargs={"server_default": "admin"})
    expires_at: datetime | None = None  # refused from then on; None: never expires


# --------------------------------------------------------------------------- GitOps
class InventoryApply(SQLModel, table=True):
    """One ``prov apply``: the inventory it applied (no secrets) and where it came from.

    The newest row is "the last applied inventory" that drift detection compares with.
    """

    __tablename__ = "inventory_apply"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(default="", max_length=1024)  # file path or git URL
    commit: str | None = Field(default=None, max_length=64)
    inventory_digest: str = Field(default="", max_length=64)
    document: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    objects: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # per object: scrypt fingerprint of the BMC password and a digest of the config it got
    fingerprints: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    ok: bool = Field(default=True)
    actor: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    # The controller's latest periodic drift check against this inventory (conductor/drift_check.py):
    # when it ran and what it found (a list of {object, kind, detail}); None until the first pass.
    drift_checked_at: datetime | None = Field(default=None)
    drift: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


# --------------------------------------------------------------------------- audit
class AuditLog(SQLModel, table=True):
    """One change made through the API: who, what, to which object, and a short summary.

    Written by provisioner/audit.py in the transaction of the change it describes. Never
    holds a secret: secret fields read ``(set)``/``(changed)``. Rows are never updated;
    the object is named (not a foreign key), so a deleted object's history stays.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        # the two filters of GET /api/v1/audit, newest first (id descending)
        Index("ix_audit_log_object", "object_type", "object_name", "id"),
        Index("ix_audit_log_actor", "actor", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=128)  # "token:<name>", as in host history
    token_id: int | None = None
    context: str = Field(default="", max_length=64)  # X-Prov-Context (e.g. the git commit applied)
    action: str = Field(max_length=32)  # create | update | delete | revoke | install | power-on | ...
    object_type: str = Field(max_length=32)  # host | rack | profile | template | token | task | ...
    object_id: int | None = None
    object_name: str = Field(default="", max_length=255)
    summary: str = Field(default="", sa_column=Column(Text, nullable=False))
    request: str = Field(default="", max_length=255)  # "PATCH /api/v1/hosts/{host}"


# --------------------------------------------------------------------------- cluster
class ClusterMember(SQLModel, table=True):
    """One ``prov serve`` process and the roles it runs (provisioner/cluster.py, issue 14).

    Written only by the process itself (register, heartbeat, clean stop) and by a conductor
    that claims it dead (``cluster.claim_dead``: one compare-and-set UPDATE), never by the API.
    """

    __tablename__ = "cluster_member"
    __table_args__ = (
        # claim_dead's WHERE (state = 'up' AND heartbeat_at < cutoff) and live_members' filter
        Index("ix_cluster_member_state_heartbeat", "state", "heartbeat_at"),
    )

    id: str = Field(primary_key=True, max_length=128)  # hostname:pid:random, the executor id too
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # api conductor boot
    hostname: str = Field(default="", max_length=255)
    pid: int = Field(default=0)
    version: str = Field(default="", max_length=64)
    networks: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # boot: CIDRs
    api_url: str | None = Field(default=None, max_length=2048)
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    state: str = Field(default="up", max_length=16)  # up | stopped | dead
    taken_over_by: str | None = Field(default=None, max_length=128)  # the member that claimed it dead


# --------------------------------------------------------------------------- event stream
class EventStreamRow(SQLModel, table=True):
    """One event of ``GET /api/v1/events/stream`` (provisioner/events_stream.py, issue 16).

    An outbox: provisioner/event_outbox.py appends it in the transaction of the change it
    describes, so its id (the SSE ``id:``) exists exactly when the change was committed, and ids
    are in commit order (the insert happens at commit, under one lock on PostgreSQL). Names, not
    foreign keys: a deleted host's events stay readable. Pruned oldest first after the retention.
    """

    __tablename__ = "event_stream"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(max_length=32)  # events_stream.KINDS
    host_name: str | None = Field(default=None, max_length=63)
    rack_name: str | None = Field(default=None, max_length=63)
    task_id: int | None = None
    state: str | None = Field(default=None, max_length=32)
    message: str = Field(default="", sa_column=Column(Text, nullable=False))
    progress: int | None = None


class EventStreamMark(SQLModel, table=True):
    """One row (id 1): the newest event id pruned, so a resume from before it is told what it lost."""

    __tablename__ = "event_stream_mark"

    id: int | None = Field(default=None, primary_key=True)
    pruned_through: int = Field(default=0)


# The event stream's session hooks (after every class above exists: the module imports them).
from provisioner import event_outbox as _event_outbox  # noqa: E402, F401
