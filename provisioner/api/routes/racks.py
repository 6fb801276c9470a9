"""Racks: CRUD. A rack that still holds hosts cannot be deleted (409)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from provisioner import crud
from provisioner.api.deps import SessionDep
from provisioner.api.pagination import Limit, Offset
from provisioner.schemas import Page, RackCreate, RackPublic, RackUpdate

router = APIRouter(prefix="/racks", tags=["racks"])


@router.get("", response_model=Page[RackPublic])
def list_racks(session: SessionDep, limit: Limit = 100, offset: Offset = 0,
               site: Annotated[str | None, Query(max_length=128, description="only racks at this site")] = None,
               ) -> Page[RackPublic]:
    rows, total = crud.list_racks(session, limit=limit, offset=offset, site=site)
    return Page[RackPublic](data=rows, count=total, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=RackPublic)
def create_rack(body: RackCreate, session: SessionDep) -> RackPublic:
    rack = crud.create_rack(session, data=body)
    return crud.rack_public(rack, 0)


@router.get("/{rack}", response_model=RackPublic)
def get_rack(rack: str, session: SessionDep) -> RackPublic:
    row = crud.get_rack(session, rack)
    return crud.rack_public(row, crud.rack_host_count(session, rack_id=row.id or 0))


@router.patch("/{rack}", response_model=RackPublic)
def update_rack(rack: str, body: RackUpdate, session: SessionDep) -> RackPublic:
    row = crud.update_rack(session, crud.get_rack(session, rack), data=body)
    return crud.rack_public(row, crud.rack_host_count(session, rack_id=row.id or 0))


@router.delete("/{rack}", status_code=204, responses={409: {"description": "the rack still holds hosts"}})
def delete_rack(rack: str, session: SessionDep) -> Response:
    crud.delete_rack(session, crud.get_rack(session, rack))
    return Response(status_code=204)
