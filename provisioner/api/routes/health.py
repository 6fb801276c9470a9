"""Liveness and readiness, without a token (load balancers and orchestrators call these)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from provisioner.api.deps import SessionDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready | unavailable")
    schema_: str | None = Field(None, alias="schema", description="the database's migration revision (ready)")
    reason: str | None = Field(None, description="why not (unavailable)")


@router.get("/healthz", response_model=Health)
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


# The answer is built here (JSONResponse): the models document it, nothing is validated.
@router.get("/readyz", response_model=Readiness, responses={
    503: {"description": "database not reachable or schema not migrated", "model": Readiness}})
def readyz(session: SessionDep) -> JSONResponse:
    """The database answers and the schema has been migrated."""
    try:
        session.execute(text("SELECT 1"))
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        session.rollback()
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": exc.__class__.__name__})
    return JSONResponse(content={"status": "ready", "schema": version})
