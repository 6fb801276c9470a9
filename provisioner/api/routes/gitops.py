"""The last applied inventory (written by ``prov apply``) and drift against it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import col, select

from provisioner import secret_store
from provisioner.api.deps import ActorDep, SessionDep, SettingsDep
from provisioner.conductor import drift_check, drift_config
from provisioner.models import InventoryApply, utcnow
from provisioner.schemas import TaskPublic

router = APIRouter(tags=["gitops"])


class AppliedIn(BaseModel):
    source: str = Field(default="", max_length=1024)
    commit: str | None = Field(default=None, max_length=64, pattern=r"^[0-9a-fA-F]{7,64}$")
    inventory_digest: str = Field(default="", max_length=64)
    document: dict[str, Any] = Field(default_factory=dict)
    objects: list[str] = Field(default_factory=list)
    fingerprints: dict[str, dict[str, str]] = Field(default_factory=dict)
    ok: bool = True


class AppliedOut(AppliedIn):
    id: int | None = None
    actor: str = ""
    created_at: str | None = None
    salt: str


def _salt(settings: Any) -> str:
    """Per-controller salt for password fingerprints, derived from the secret key (never stored)."""
    key = secret_store.load_key(settings)
    return hmac.new(key, b"prov-gitops-password-fingerprint", hashlib.sha256).hexdigest()[:32]


@router.get("/gitops/applied", response_model=AppliedOut)
def get_applied(session: SessionDep, settings: SettingsDep) -> AppliedOut:
    row = session.exec(select(InventoryApply).order_by(col(InventoryApply.id).desc()).limit(1)).first()
    if row is None:
        return AppliedOut(salt=_salt(settings))
    return AppliedOut(
        id=row.id, source=row.source, commit=row.commit, inventory_digest=row.inventory_digest,
        document=row.document, objects=row.objects, fingerprints=row.fingerprints, ok=row.ok,
        actor=row.actor, created_at=row.created_at.isoformat(), salt=_salt(settings),
    )


@router.put("/gitops/applied", response_model=AppliedOut)
def put_applied(body: AppliedIn, session: SessionDep, settings: SettingsDep, actor: ActorDep) -> AppliedOut:
    row = InventoryApply(**body.model_dump(), actor=actor, created_at=utcnow())
    session.add(row)
    session.commit()
    session.refresh(row)
    return AppliedOut(**body.model_dump(), id=row.id, actor=actor, created_at=row.created_at.isoformat(),
                      salt=_salt(settings))


class DriftOut(BaseModel):
    applied_id: int | None = None
    checked_at: str | None = Field(default=None, description="when the controller's periodic check last ran")
    interval: float = Field(description="seconds between periodic checks (0: the periodic check is off)")
    count: int = 0
    drift: list[dict[str, str]] = Field(default_factory=list, description="object, kind, detail")


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
