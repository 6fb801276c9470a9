"""Liveness and readiness, without a token (load balancers and orchestrators call these)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from provisioner.api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database not reachable or schema not migrated"}})
def readyz(session: SessionDep) -> JSONResponse:
    """The database answers and the schema has been migrated."""
    try:
        session.execute(text("SELECT 1"))
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        session.rollback()
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": exc.__class__.__name__})
    return JSONResponse(content={"status": "ready", "schema": version})
