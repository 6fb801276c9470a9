"""Hosts (+ their NICs and BMC): CRUD, listing with filters, and operator transitions.

Install, configure and decommission have their own workflow endpoints (in
their own modules); ``/transition`` only carries the operator's own events:
maintain, unmaintain and abort.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from provisioner import crud, lifecycle
from provisioner import states as S
from provisioner.api import etags
from provisioner.api.deps import ActorDep, SessionDep, SettingsDep
from provisioner.api.etags import IfMatch, IfNoneMatch
from provisioner.api.pagination import Limit, Offset
from provisioner.api.responses import json_response
from provisioner.conductor import engine
from provisioner.errors import Conflict, InvalidInput, InvalidTransition
from provisioner.models import Host
from provisioner.schemas import HOST_SORT_KEYS, HostCreate, HostPublic, HostUpdate, Page, TransitionRequest

router = APIRouter(prefix="/hosts", tags=["hosts"])

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "duplicate name, MAC or BMC endpoint, or an invalid transition"},
}


@router.get("", response_model=Page[HostPublic])
def list_hosts(
    session: SessionDep,
    state: str | None = Query(None, description=f"one of: {', '.join(sorted(S.ALL))}"),
    rack: str | None = Query(None, description="rack name"),
    role: str | None = Query(None, description="hosts having this role"),
    power_state: str | None = Query(None, description="on, off or unknown"),
    profile: str | None = Query(None, description="profile name"),
    name: str | None = Query(None, max_length=63, description="name prefix"),
    sort: str = Query("name", description=f"one of {', '.join(HOST_SORT_KEYS)}; prefix '-' for descending"),
    limit: Limit = 100,
    offset: Offset = 0,
) -> Response:
    if state is not None and state not in S.ALL:
        raise InvalidInput(field="state", reason=f"unknown state {state!r}")
    rows, total = crud.list_hosts(session, state=state, rack=rack, role=role, power_state=power_state,
                                  profile=profile, name=name, sort=sort, limit=limit, offset=offset)
    # Serialised here, once: the rows are HostPublic-shaped dicts built from our own columns, so
    # validating them again as models would double the cost of a 100-host page (bench/api).
    return json_response({"data": rows, "count": total, "limit": limit, "offset": offset})


@router.post("", status_code=201, response_model=HostPublic, responses=etags.created_responses(_CONFLICT))
def create_host(body: HostCreate, session: SessionDep, actor: ActorDep, settings: SettingsDep,
                request: Request) -> Response:
    host = crud.create_host(session, data=body, actor=actor, settings=settings)
    return etags.tagged_json(crud.host_public_dict(session, host), status_code=201,
                             location=etags.location(request, host.name))


@router.get("/{host}", response_model=HostPublic, responses=etags.read_responses())
def get_host(host: str, session: SessionDep, if_none_match: IfNoneMatch = None) -> Response:
    # Like the listing: a HostPublic-shaped dict straight from the row, serialised once
    # (response_model documents it), with its ETag (api/etags.py).
    return etags.tagged_json(crud.host_public_dict(session, host), if_none_match)


def _guard(session: Session, row: Host, if_match: str | None) -> None:
    """If-Match: under the host row's lock, its ETag now (as GET answers it) must be one named."""
    etags.guarded(session, row, if_match, lambda: etags.json_tag(crud.host_public_dict(session, row.id or 0)),
                  kind="host")


@router.patch("/{host}", response_model=HostPublic, responses=etags.write_responses(_CONFLICT))
def update_host(host: str, body: HostUpdate, session: SessionDep, settings: SettingsDep,
                if_match: IfMatch = None) -> Response:
    row = crud.get_host(session, host)
    _guard(session, row, if_match)
    row = crud.update_host(session, row, data=body, settings=settings)
    return etags.tagged_json(crud.host_public_dict(session, row.id or 0))  # as committed, read back


@router.delete("/{host}", status_code=204, responses=etags.write_responses(
    {409: {"description": "the host is mid-task"}}, answers_object=False))
def delete_host(host: str, session: SessionDep, if_match: IfMatch = None) -> Response:
    row = crud.get_host(session, host)
    _guard(session, row, if_match)
    crud.delete_host(session, row)
    return Response(status_code=204)


@router.post("/{host}/transition", response_model=HostPublic, responses=_CONFLICT)
def transition(host: str, body: TransitionRequest, session: SessionDep, actor: ActorDep,
               settings: SettingsDep) -> Response:
    """Operator events only: ``maintain``, ``unmaintain``, ``abort``. 409 names the current state."""
    row = crud.get_host(session, host)
    try:
        row = lifecycle.advance(session, row, body.event, message=body.message or f"{body.event} by {actor}",
                                actor=actor, settings=settings)
    except InvalidTransition:
        raise
    except (Conflict, OperationalError) as exc:
        # Lost the compare-and-set (or SQLite's writer lock) to a concurrent request.
        session.rollback()
        fresh = crud.get_host(session, host)
        session.refresh(fresh)
        raise Conflict(
            reason=f"host {fresh.name} was moved by another request (now {fresh.state}); try again",
            host=fresh.name, current_state=fresh.state, allowed_events=lifecycle.allowed_events(fresh.state),
        ) from exc
    if body.event == S.ABORT and row.id is not None:
        # The phase is over for the state machine; tell its running task to stop at its next step.
        active, _ = crud.list_tasks(session, host_id=row.id, status=S.TASK_RUNNING, limit=100)
        pending, _ = crud.list_tasks(session, host_id=row.id, status=S.TASK_PENDING, limit=100)
        for task in active + pending:
            if task.id is not None:
                engine.cancel(task.id, settings)
    return etags.tagged_json(crud.host_public_dict(session, row))
