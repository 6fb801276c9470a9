"""The last applied inventory (written by ``prov apply``) and drift against it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from provisioner.api.deps import ActorDep, SessionDep, SettingsDep
from provisioner.conductor import applied, drift_check, drift_config
from provisioner.models import InventoryApply, utcnow
from provisioner.schemas import TaskPublic

router = APIRouter(tags=["gitops"])


class AppliedIn(BaseModel):
    source: str = Field(default="", max_length=1024)
    commit: str | None = Field(default=None, max_length=64, pattern=r"^[0-9a-fA-F]{7,64}$")
    inventory_digest: str = Field(default="", max_length=64)
    document: dict[str, Any] = Field(default_factory=dict)
    objects: list[str] = Field(default_factory=list)
    fingerprints: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per object: config digest and BMC password fingerprint (never the value)")
    ok: bool = Field(default=True, description="false: some actions failed; the record holds what succeeded")


class AppliedOut(AppliedIn):
    id: int | None = None
    actor: str = ""
    created_at: str | None = None
    salt: str


@router.get("/gitops/applied", response_model=AppliedOut)
def get_applied(session: SessionDep, settings: SettingsDep) -> AppliedOut:
    """The last applied inventory; each password fingerprint is the stored password's now."""
    row = applied.latest(session)
    if row is None:
        return AppliedOut(salt=applied.salt(settings))
    return AppliedOut(**applied.record_dict(session, settings, row))


@router.put("/gitops/applied", response_model=AppliedOut)
def put_applied(body: AppliedIn, session: SessionDep, settings: SettingsDep, actor: ActorDep) -> AppliedOut:
    """Record an apply; a password fingerprint that does not match the stored password is dropped."""
    prev = applied.latest(session)
    data = body.model_dump()
    data["fingerprints"] = applied.stamp(session, settings, body.fingerprints, prev.fingerprints if prev else None)
    row = InventoryApply(**data, actor=actor, created_at=utcnow())
    session.add(row)
    session.commit()
    session.refresh(row)
    return AppliedOut(**applied.record_dict(session, settings, row))


class FingerprintsOut(BaseModel):
    salt: str
    fingerprints: dict[str, str | None] = Field(
        description="host -> fingerprint of its stored BMC password (null: no password or no such host)")


@router.get("/gitops/fingerprints", response_model=FingerprintsOut)
def get_fingerprints(session: SessionDep, settings: SettingsDep,
                     host: Annotated[list[str], Query(max_length=100)] = []) -> FingerprintsOut:  # noqa: B006
    """Fingerprints of stored BMC passwords (scrypt, this controller's salt): how ``prov plan`` tells
    an unchanged password of a host no apply has recorded yet, without the value leaving either side."""
    return FingerprintsOut(salt=applied.salt(settings), fingerprints=applied.fingerprints(session, settings, host))


class FieldChange(BaseModel):
    field: str
    old: Any = Field(default=None, description="the value of the last applied inventory")
    new: Any = Field(default=None, description="the value on the controller now")


class DriftItem(BaseModel):
    object: str
    kind: str
    detail: str = ""
    changes: list[FieldChange] = Field(default_factory=list)


class DriftOut(BaseModel):
    applied_id: int | None = None
    checked_at: str | None = Field(default=None, description="when the controller's periodic check last ran")
    interval: float = Field(description="seconds between periodic checks (0: the periodic check is off)")
    count: int = 0
    drift: list[DriftItem] = Field(default_factory=list)


@router.get("/gitops/drift/last", response_model=DriftOut)
def get_last_drift(session: SessionDep, settings: SettingsDep) -> DriftOut:
    """The controller's latest periodic drift check against the last applied inventory (not recomputed)."""
    return DriftOut(**drift_check.last_result(session), interval=settings.drift_check_interval)


class ConfigDriftIn(BaseModel):
    hosts: list[str] = Field(default_factory=list, max_length=10000,
                             description="only these hosts of the applied inventory (default: every active one)")


@router.post("/gitops/drift/config", status_code=202, response_model=TaskPublic)
def check_config_drift(body: ConfigDriftIn, session: SessionDep, settings: SettingsDep,
                       actor: ActorDep) -> TaskPublic:
    """Run each active host's playbooks in Ansible check mode (changes nothing); the task's result
    lists hosts whose configuration differs (drift kind ``config``, naming the tasks)."""
    task = drift_config.submit(session, hosts=body.hosts or None, actor=actor, settings=settings)
    return TaskPublic.model_validate(task)
