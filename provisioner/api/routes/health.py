"""Liveness and readiness, without a token (load balancers and orchestrators call these)."""

from __future__ import annotations

import anyio
import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from provisioner.api.deps import SettingsDep
from provisioner.db import get_engine
from provisioner.settings import Settings

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready | unavailable")
    schema_: str | None = Field(None, alias="schema", description="the database's migration revision (ready)")
    reason: str | None = Field(None, description="why not (unavailable)")


# Liveness must not wait behind the database or the route threads (issue 18: a sync /healthz
# waited for a worker thread like everything else): no thread, no database.
@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


# A probe gets its answer within this long even when the database (or every route thread) is busy.
READY_TIMEOUT_S = 2.0


def _check_database(settings: Settings) -> str | None:
    with Session(get_engine(settings)) as session:
        session.execute(text("SELECT 1"))
        return session.execute(text("SELECT version_num FROM alembic_version")).scalar()


# The answer is built here (JSONResponse): the models document it, nothing is validated.
@router.get("/readyz", response_model=Readiness, responses={
    503: {"description": "database not reachable or schema not migrated", "model": Readiness}})
async def readyz(settings: SettingsDep) -> JSONResponse:
    """The database answers (within 2 s) and the schema has been migrated."""
    version: str | None = None
    reason = "timeout"
    # abandon_on_cancel: a check stuck on the pool finishes (and gives its connection back) by itself
    with anyio.move_on_after(READY_TIMEOUT_S):
        try:
            version = await anyio.to_thread.run_sync(_check_database, settings, abandon_on_cancel=True)
            reason = ""
        except (SQLAlchemyError, TimeoutError) as exc:
            reason = exc.__class__.__name__
    if reason:
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": reason})
    return JSONResponse(content={"status": "ready", "schema": version})
