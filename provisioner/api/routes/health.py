"""Liveness and readiness, without a token (load balancers and orchestrators call these)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from provisioner import cluster
from provisioner.api.deps import SettingsDep
from provisioner.api.routes.cluster import MemberBrief, brief
from provisioner.db import get_engine
from provisioner.settings import Settings

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready | unavailable")
    schema_: str | None = Field(None, alias="schema", description="the database's migration revision (ready)")
    reason: str | None = Field(None, description="why not (unavailable)")
    members: list[MemberBrief] | None = Field(
        None, description="the live cluster members (ready): conductors, boot agents and api processes, "
                          "with their last heartbeat (GET /api/v1/cluster has the details)")


# Liveness must not wait behind the database or the route threads (issue 18: a sync /healthz
# waited for a worker thread like everything else): no thread, no database.
@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


# A probe gets its answer within this long even when the database (or every route thread) is busy.
READY_TIMEOUT_S = 2.0
# The check's own threads: in the route threads' queue (api/offload.ROUTE_THREADS, hundreds of
# requests deep under load) a probe waited its whole timeout and answered 503 with the database
# idle. Two: a check stuck on a dead database keeps its thread (abandon_on_cancel), and the next
# probe still finds one.
_READY_LIMITER: RunVar[CapacityLimiter] = RunVar("prov_readyz_limiter")
READY_THREADS = 2


def _ready_limiter() -> CapacityLimiter:
    try:
        return _READY_LIMITER.get()
    except LookupError:
        limiter = CapacityLimiter(READY_THREADS)
        _READY_LIMITER.set(limiter)
        return limiter


def _check_database(settings: Settings) -> tuple[str | None, list[dict[str, Any]]]:
    # One short session: the revision and the live members (an index range on cluster_member's
    # state and heartbeat, a handful of rows), then the connection goes back to the pool.
    with Session(get_engine(settings)) as session:
        session.execute(text("SELECT 1"))
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        _now, live = cluster.members(session, grace_s=settings.cluster_takeover_grace, live_only=True)
        return version, [brief(v).model_dump(mode="json") for v in live]


# The answer is built here (JSONResponse): the models document it, nothing is validated.
@router.get("/readyz", response_model=Readiness, responses={
    503: {"description": "database not reachable or schema not migrated", "model": Readiness}})
async def readyz(settings: SettingsDep) -> JSONResponse:
    """The database answers (within 2 s) and the schema has been migrated; the live cluster members."""
    version: str | None = None
    members: list[dict[str, Any]] = []
    reason = "timeout"
    # abandon_on_cancel: a check stuck on the pool finishes (and gives its connection back) by itself
    with anyio.move_on_after(READY_TIMEOUT_S):
        try:
            version, members = await anyio.to_thread.run_sync(_check_database, settings, abandon_on_cancel=True,
                                                              limiter=_ready_limiter())
            reason = ""
        except (SQLAlchemyError, TimeoutError) as exc:
            reason = exc.__class__.__name__
    if reason:
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": reason})
    return JSONResponse(content={"status": "ready", "schema": version, "members": members})
