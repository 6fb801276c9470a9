"""The audit log (admin only): every change made through the API, newest first.

Rows are written by provisioner/audit.py in the transaction of each change; this route
only reads them, a page at a time, following ``next_cursor``.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from provisioner import crud_audit
from provisioner.api.deps import SessionDep
from provisioner.api.pagination import Limit

router = APIRouter(tags=["audit"])


class AuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    actor: str = Field(description='"token:<name>"')
    token_id: int | None
    context: str = Field(description="what the client said it acted for (X-Prov-Context), e.g. a git commit")
    action: str
    object_type: str
    object_id: int | None
    object_name: str
    summary: str = Field(description="what changed, without secret values")
    request: str = Field(description="method and route of the request that made the change")


class AuditPage(BaseModel):
    data: list[AuditPublic]
    limit: int
    next_cursor: int | None = Field(description="pass as ``cursor`` for the next (older) page; null: no more")


@router.get("/audit", response_model=AuditPage)
def list_audit(
    session: SessionDep,
    actor: str | None = Query(None, max_length=128, description="token name, token:<name> or token id"),
    obj: str | None = Query(None, alias="object", max_length=300,
                            description="TYPE/NAME (host/web01), TYPE/ (every host) or NAME (any type)"),
    action: str | None = Query(None, max_length=32, description="create, update, delete, revoke, install, ..."),
    limit: Limit = 100,
    cursor: int | None = Query(None, ge=1, le=2**31 - 1, description="next_cursor of the previous page"),
) -> AuditPage:
    rows, nxt = crud_audit.list_audit(session, actor=actor, obj=obj, action=action, limit=limit, cursor=cursor)
    return AuditPage(data=[AuditPublic.model_validate(r) for r in rows], limit=limit, next_cursor=nxt)
