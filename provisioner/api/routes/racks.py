"""Racks: CRUD. A rack that still holds hosts cannot be deleted (409).

One rack's answers carry its ETag; PATCH and DELETE honour If-Match (api/etags.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlmodel import Session

from provisioner import crud
from provisioner.api import etags
from provisioner.api.deps import SessionDep
from provisioner.api.etags import IfMatch, IfNoneMatch
from provisioner.api.pagination import Limit, Offset
from provisioner.models import Rack
from provisioner.schemas import Page, RackCreate, RackPublic, RackUpdate

router = APIRouter(prefix="/racks", tags=["racks"])


def _public(session: Session, row: Rack) -> RackPublic:
    return crud.rack_public(row, crud.rack_host_count(session, rack_id=row.id or 0))


def _guard(session: Session, row: Rack, if_match: str | None) -> None:
    etags.guarded(session, row, if_match, lambda: etags.json_tag(_public(session, row)), kind="rack")


@router.get("", response_model=Page[RackPublic])
def list_racks(session: SessionDep, limit: Limit = 100, offset: Offset = 0,
               site: Annotated[str | None, Query(max_length=128, description="only racks at this site")] = None,
               ) -> Page[RackPublic]:
    rows, total = crud.list_racks(session, limit=limit, offset=offset, site=site)
    return Page[RackPublic](data=rows, count=total, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=RackPublic, responses=etags.created_responses())
def create_rack(body: RackCreate, session: SessionDep, request: Request) -> Response:
    rack = crud.create_rack(session, data=body)
    return etags.tagged_json(crud.rack_public(rack, 0), status_code=201, location=etags.location(request, rack.name))


@router.get("/{rack}", response_model=RackPublic, responses=etags.read_responses())
def get_rack(rack: str, session: SessionDep, if_none_match: IfNoneMatch = None) -> Response:
    return etags.tagged_json(_public(session, crud.get_rack(session, rack)), if_none_match)


@router.patch("/{rack}", response_model=RackPublic, responses=etags.write_responses())
def update_rack(rack: str, body: RackUpdate, session: SessionDep, if_match: IfMatch = None) -> Response:
    row = crud.get_rack(session, rack)
    _guard(session, row, if_match)
    row = crud.update_rack(session, row, data=body)
    return etags.tagged_json(_public(session, row))


@router.delete("/{rack}", status_code=204, responses=etags.write_responses(
    {409: {"description": "the rack still holds hosts"}}, answers_object=False))
def delete_rack(rack: str, session: SessionDep, if_match: IfMatch = None) -> Response:
    row = crud.get_rack(session, rack)
    _guard(session, row, if_match)
    crud.delete_rack(session, row)
    return Response(status_code=204)
