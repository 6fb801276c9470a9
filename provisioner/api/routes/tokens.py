"""API tokens, managed by an admin through the API: create (the token shown once), list, revoke.

``prov token create|list|revoke`` call these when the CLI is logged in to a controller;
on the controller's own machine they can also work on the database directly
(provisioner/server.py). Scopes are listed in provisioner/auth.py and enforced for every
route in api/scopes.py; these routes are admin-only there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from provisioner import auth
from provisioner.api.deps import SessionDep, forget_token
from provisioner.api.pagination import Limit, Offset
from provisioner.errors import InvalidInput
from provisioner.models import ApiToken, utcnow
from provisioner.schemas import Page

router = APIRouter(prefix="/tokens", tags=["tokens"])

Scope = Literal["admin", "operator", "viewer", "installer", "metrics"]
TEN_YEARS_S = 10 * 366 * 86400
TokenId = Annotated[int, Path(ge=1, le=2**31 - 1, description="token id")]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$",
                      description="who or what the token is for (shows as the actor in history and audit)")
    scopes: list[Scope] = Field(min_length=1, max_length=5, description="what the token may do")
    expires_in: int | None = Field(None, ge=60, le=TEN_YEARS_S, description="lifetime in seconds from now")
    expires_at: datetime | None = Field(None, description="when it stops working (UTC unless an offset is given)")

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenCreate:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        return self

    def expiry(self) -> datetime | None:
        if self.expires_in is not None:
            return utcnow() + timedelta(seconds=self.expires_in)
        if self.expires_at is None:
            return None
        when = self.expires_at if self.expires_at.tzinfo else self.expires_at.replace(tzinfo=UTC)
        if when <= utcnow():
            raise InvalidInput(field="expires_at", reason="is in the past")
        if when > utcnow() + timedelta(seconds=TEN_YEARS_S):
            raise InvalidInput(field="expires_at", reason="is more than ten years away")
        return when.astimezone(UTC)


class TokenPublic(BaseModel):
    """A token as listed: never the token itself, nor its hash."""

    id: int
    name: str
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="the latest use, to the minute")
    revoked: bool
    expired: bool


class TokenCreated(TokenPublic):
    token: str = Field(description="the token itself: shown only in this answer (only its sha256 is stored)")


def token_public(row: ApiToken) -> TokenPublic:
    return TokenPublic(id=row.id or 0, name=row.name, scopes=list(auth.token_scopes(row)),  # type: ignore[arg-type]
                       created_at=row.created_at, expires_at=row.expires_at, last_used_at=row.last_used_at,
                       revoked=row.revoked, expired=auth.is_expired(row.expires_at))


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep, response: Response) -> TokenCreated:
    """A new token with these scopes; the answer is the only place the token ever appears."""
    row, plain = auth.issue_token(session, name=body.name, scopes=body.scopes, expires_at=body.expiry())
    response.headers["Location"] = f"/api/v1/tokens/{row.id}"
    response.headers["Cache-Control"] = "no-store"
    return TokenCreated(**token_public(row).model_dump(), token=plain)


@router.get("", response_model=Page[TokenPublic])
def list_tokens(session: SessionDep, limit: Limit = 100, offset: Offset = 0) -> Page[TokenPublic]:
    rows = auth.list_tokens(session, limit=limit, offset=offset)
    return Page[TokenPublic](data=[token_public(r) for r in rows], count=auth.count_tokens(session), limit=limit,
                             offset=offset)


@router.get("/{token_id}", response_model=TokenPublic)
def get_token(token_id: TokenId, session: SessionDep) -> TokenPublic:
    return token_public(auth.get_token(session, token_id))


@router.delete("/{token_id}", status_code=204, responses={
    409: {"description": "the last usable admin token (create another admin token first)"}})
def revoke_token(token_id: TokenId, session: SessionDep) -> Response:
    """Revoke: refused at once by this controller, within its 10 s token cache by any other."""
    row = auth.revoke_token(session, auth.get_token(session, token_id))
    forget_token(row.token_hash)
    return Response(status_code=204)
