"""The cluster: which ``prov serve`` processes run, their roles and last heartbeat (issue 14).

``GET /api/v1/cluster`` (viewer) lists the members up (live, or stale: silent longer than
``cluster_takeover_grace`` and not yet claimed) and those stopped or claimed dead in the last
hour. ``GET /readyz`` shows the live ones (api/routes/health.py) in the brief form below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from provisioner import cluster
from provisioner.api.deps import SessionDep, SettingsDep
from provisioner.settings import ALL_ROLES

router = APIRouter(prefix="/cluster", tags=["cluster"])

RoleName = Literal["api", "conductor", "boot"]
_OUT = ConfigDict(json_schema_serialization_defaults_required=True)


class MemberBrief(BaseModel):
    """A member as /readyz lists it."""

    model_config = _OUT
    id: str = Field(description="member id, host:pid:random (also the workflow engine's executor id)",
                    examples=["ctl1:4242:9f3a01bc"])
    roles: list[RoleName]
    networks: list[str] = Field(description="the provisioning networks a boot agent serves (CIDRs)")
    heartbeat_at: datetime
    heartbeat_age_s: float = Field(description="seconds since the last heartbeat, by the database's clock")


class ClusterMemberPublic(MemberBrief):
    hostname: str
    pid: int
    version: str
    api_url: str | None = Field(description="the API's base URL (api role)")
    started_at: datetime
    status: Literal["live", "stale", "stopped", "dead"] = Field(
        description="live; stale: silent for longer than the takeover grace, not yet claimed; "
                    "stopped: shut down cleanly; dead: claimed by a conductor, which took its work over")
    taken_over_by: str | None = Field(description="the member that claimed it dead")


class RoleCounts(BaseModel):
    model_config = _OUT
    api: int = 0
    conductor: int = 0
    boot: int = 0


class ClusterPublic(BaseModel):
    model_config = _OUT
    now: datetime = Field(description="the database's clock, which heartbeats are stamped with")
    heartbeat_interval_s: float
    takeover_grace_s: float
    live: RoleCounts = Field(description="live members per role (a member may run several roles)")
    members: list[ClusterMemberPublic]


def brief(view: cluster.MemberView) -> MemberBrief:
    r = view.row
    return MemberBrief(id=r.id, roles=r.roles, networks=r.networks, heartbeat_at=r.heartbeat_at,  # type: ignore[arg-type]
                       heartbeat_age_s=view.heartbeat_age_s)


def cluster_view(session: Session, *, grace_s: float, interval_s: float) -> ClusterPublic:
    now, views = cluster.members(session, grace_s=grace_s)
    counts = {role: sum(1 for v in views if v.status == "live" and role in v.row.roles) for role in ALL_ROLES}
    members = [ClusterMemberPublic(**brief(v).model_dump(), hostname=v.row.hostname, pid=v.row.pid,
                                   version=v.row.version, api_url=v.row.api_url, started_at=v.row.started_at,
                                   status=v.status, taken_over_by=v.row.taken_over_by)  # type: ignore[arg-type]
               for v in views]
    return ClusterPublic(now=now, heartbeat_interval_s=interval_s, takeover_grace_s=grace_s,
                         live=RoleCounts(**counts), members=members)


@router.get("", response_model=ClusterPublic)
def get_cluster(session: SessionDep, settings: SettingsDep) -> ClusterPublic:
    """The ``prov serve`` processes of this cluster: roles, networks, last heartbeat, status."""
    return cluster_view(session, grace_s=settings.cluster_takeover_grace,
                        interval_s=settings.cluster_heartbeat_interval)
