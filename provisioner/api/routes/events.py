"""Host history (append-only), read-only; a deleted host's history stays readable by its name."""

from __future__ import annotations

from fastapi import APIRouter

from provisioner import crud, crud_audit
from provisioner.api.deps import SessionDep
from provisioner.api.pagination import Limit, Offset
from provisioner.errors import NotFound
from provisioner.schemas import EventPublic, Page

router = APIRouter(tags=["events"])


def _page(session: SessionDep, host_id: int | None, event: str | None, limit: int, offset: int) -> Page[EventPublic]:
    rows, total = crud.list_events(session, host_id=host_id, event=event, limit=limit, offset=offset)
    return Page[EventPublic](data=[EventPublic.model_validate(r) for r in rows], count=total, limit=limit,
                             offset=offset)


@router.get("/events", response_model=Page[EventPublic])
def list_events(
    session: SessionDep, host: str | None = None, event: str | None = None, limit: Limit = 100, offset: Offset = 0,
) -> Page[EventPublic]:
    if host is None:
        return _page(session, None, event, limit, offset)
    return host_events(host, session, event, limit, offset)


@router.get("/hosts/{host}/events", response_model=Page[EventPublic])
def host_events(
    host: str, session: SessionDep, event: str | None = None, limit: Limit = 100, offset: Offset = 0,
) -> Page[EventPublic]:
    """``prov host history NAME``: the host's transitions and notes, oldest first.

    A host that was deleted keeps its history (host_id null): read by its name."""
    try:
        host_id = crud.get_host(session, host).id
    except NotFound:
        rows, total = crud_audit.deleted_host_events(session, name=host, event=event, limit=limit, offset=offset)
        if not total:
            raise
        return Page[EventPublic](data=[EventPublic.model_validate(r) for r in rows], count=total, limit=limit,
                                 offset=offset)
    return _page(session, host_id, event, limit, offset)
