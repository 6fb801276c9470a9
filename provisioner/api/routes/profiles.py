"""OS profiles: CRUD. A profile used by hosts cannot be deleted (409)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from provisioner import crud
from provisioner.api.deps import SessionDep
from provisioner.api.pagination import Limit, Offset
from provisioner.schemas import Page, ProfileCreate, ProfilePublic, ProfileUpdate

router = APIRouter(prefix="/profiles", tags=["profiles"])


@router.get("", response_model=Page[ProfilePublic])
def list_profiles(session: SessionDep, limit: Limit = 100, offset: Offset = 0) -> Page[ProfilePublic]:
    rows, total = crud.list_profiles(session, limit=limit, offset=offset)
    return Page[ProfilePublic](data=[ProfilePublic.model_validate(r) for r in rows], count=total,
                               limit=limit, offset=offset)


@router.post("", status_code=201, response_model=ProfilePublic)
def create_profile(body: ProfileCreate, session: SessionDep) -> ProfilePublic:
    return ProfilePublic.model_validate(crud.create_profile(session, data=body))


@router.get("/{profile}", response_model=ProfilePublic)
def get_profile(profile: str, session: SessionDep) -> ProfilePublic:
    return ProfilePublic.model_validate(crud.get_profile(session, profile))


@router.patch("/{profile}", response_model=ProfilePublic)
def update_profile(profile: str, body: ProfileUpdate, session: SessionDep) -> ProfilePublic:
    return ProfilePublic.model_validate(crud.update_profile(session, crud.get_profile(session, profile), data=body))


@router.delete("/{profile}", status_code=204, responses={409: {"description": "hosts still use the profile"}})
def delete_profile(profile: str, session: SessionDep) -> Response:
    crud.delete_profile(session, crud.get_profile(session, profile))
    return Response(status_code=204)
