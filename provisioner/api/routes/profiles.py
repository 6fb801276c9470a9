"""OS profiles: CRUD. A profile used by hosts cannot be deleted (409).

One profile's answers carry its ETag; PATCH and DELETE honour If-Match (api/etags.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlmodel import Session

from provisioner import crud
from provisioner.api import etags
from provisioner.api.deps import SessionDep
from provisioner.api.etags import IfMatch, IfNoneMatch
from provisioner.api.pagination import Limit, Offset
from provisioner.models import Profile
from provisioner.schemas import Page, ProfileCreate, ProfilePublic, ProfileUpdate

router = APIRouter(prefix="/profiles", tags=["profiles"])


def _guard(session: Session, row: Profile, if_match: str | None) -> None:
    etags.guarded(session, row, if_match, lambda: etags.json_tag(ProfilePublic.model_validate(row)), kind="profile")


@router.get("", response_model=Page[ProfilePublic])
def list_profiles(session: SessionDep, limit: Limit = 100, offset: Offset = 0) -> Page[ProfilePublic]:
    rows, total = crud.list_profiles(session, limit=limit, offset=offset)
    return Page[ProfilePublic](data=[ProfilePublic.model_validate(r) for r in rows], count=total,
                               limit=limit, offset=offset)


@router.post("", status_code=201, response_model=ProfilePublic, responses=etags.created_responses())
def create_profile(body: ProfileCreate, session: SessionDep, request: Request) -> Response:
    row = crud.create_profile(session, data=body)
    return etags.tagged_json(ProfilePublic.model_validate(row), status_code=201,
                             location=etags.location(request, row.name))


@router.get("/{profile}", response_model=ProfilePublic, responses=etags.read_responses())
def get_profile(profile: str, session: SessionDep, if_none_match: IfNoneMatch = None) -> Response:
    return etags.tagged_json(ProfilePublic.model_validate(crud.get_profile(session, profile)), if_none_match)


@router.patch("/{profile}", response_model=ProfilePublic, responses=etags.write_responses())
def update_profile(profile: str, body: ProfileUpdate, session: SessionDep, if_match: IfMatch = None) -> Response:
    row = crud.get_profile(session, profile)
    _guard(session, row, if_match)
    return etags.tagged_json(ProfilePublic.model_validate(crud.update_profile(session, row, data=body)))


@router.delete("/{profile}", status_code=204, responses=etags.write_responses(
    {409: {"description": "hosts still use the profile"}}, answers_object=False))
def delete_profile(profile: str, session: SessionDep, if_match: IfMatch = None) -> Response:
    row = crud.get_profile(session, profile)
    _guard(session, row, if_match)
    crud.delete_profile(session, row)
    return Response(status_code=204)
