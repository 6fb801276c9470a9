"""Conditional requests on the operator API's objects (RFC 9110 section 13): ETag, If-Match, If-None-Match.

* Every GET of one host, rack, profile or template answers a strong ``ETag``: a digest of the
  exact bytes of the body. Not ``Host.version``: that counts state transitions only (a PATCH,
  a power sync or a rename of the host's rack change the body and leave it alone), and a strong
  validator must change whenever the representation does. ``If-None-Match`` naming it: 304.
* PATCH, PUT and DELETE take ``If-Match``: a list of ETags or ``*`` (any existing object). The
  write happens only if the object's current ETag is in the list, else 412
  ``precondition_failed`` and nothing changes. The comparison runs under the object's write
  lock (``lock_row``), taken before the ETag is computed and held until the write commits, so of
  two clients sending the same ETag exactly one wins: the other then sees the new ETag. Without
  ``If-Match`` a write is unconditional, as it always was (and takes no lock).
* PATCH and PUT answers carry the new ETag; 201 answers a ``Location``.

Following RFC 9110 section 13.2.1, preconditions are evaluated only for an object that exists
(else 404, as without them); ``*`` therefore only says "it must still exist".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Header, Request, Response
from sqlalchemy import select, update
from sqlmodel import Session

from provisioner.api.responses import dumps
from provisioner.errors import NotFound, PreconditionFailed

# 128 bits of SHA-256: collisions are out of reach for the handful of versions an object has.
_DIGEST_BYTES = 16
# An entity tag as RFC 9110 section 8.8.3 writes it: optional weakness, then a quoted opaque string.
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')

IfMatch = Annotated[str | None, Header(
    alias="If-Match", description="only change the object if its current ETag is one of these (`*`: any); "
                                  "else 412 and nothing changes")]
IfNoneMatch = Annotated[str | None, Header(
    alias="If-None-Match", description="answer 304 without a body if the object's ETag is one of these")]


def tag_of(body: bytes) -> str:
    """The strong ETag of a representation: its digest, quoted."""
    return f'"{hashlib.sha256(body).hexdigest()[: 2 * _DIGEST_BYTES]}"'


def _parse(header: str) -> list[tuple[bool, str]] | None:
    """``[(weak, opaque)]`` of an If-Match/If-None-Match value; None for ``*``. A value that is no
    list of quoted tags is read as bare comma-separated tags (``If-Match: 3f2a...``, as curl users
    type it): it can only match what we sent."""
    header = header.strip()
    if header == "*":
        return None
    if '"' not in header:
        return [(False, f'"{t.strip()}"') for t in header.split(",") if t.strip()]
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(header):
        m = _TAG.match(header, pos)
        if m is None:
            return []  # malformed: matches nothing
        tags.append((m.group(1) is not None, f'"{m.group(2)}"'))
        pos = m.end()
    return tags


def if_match_holds(header: str, current: str) -> bool:
    """RFC 9110 13.1.1: strong comparison (a weak tag never matches)."""
    tags = _parse(header)
    return tags is None or any(not weak and tag == current for weak, tag in tags)


def if_none_match_hit(header: str, current: str) -> bool:
    """RFC 9110 13.1.2: weak comparison (``W/"x"`` matches ``"x"``)."""
    tags = _parse(header)
    return tags is None or any(tag == current for _, tag in tags)


def require(if_match: str | None, current: Callable[[], str], *, kind: str, name: str, session: Session) -> None:
    """412 (after rolling back, so the lock goes at once) unless ``if_match`` holds for the ETag
    ``current()`` computes; no-op without If-Match. Call with the object's lock held."""
    if if_match is None:
        return
    if not if_match_holds(if_match, current()):
        session.rollback()
        raise PreconditionFailed(kind=kind, name=name)


def lock_row(session: Session, row: Any, *, kind: str) -> None:
    """Take the write lock of ``row``'s database row for the rest of the session's transaction, then
    re-read it (another request may have changed it while we waited). 404 if it went meanwhile.

    PostgreSQL: ``SELECT ... FOR UPDATE``. SQLite has no row locks: a no-op UPDATE as the first
    statement of the transaction takes the database's write lock (the Python driver starts a
    transaction at the first write; a read would not hold anything), waiting for the writer ahead
    of it within the busy timeout, and from then on this transaction reads the latest rows.
    """
    model = type(row)
    key = model.id  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "sqlite":
        found = session.execute(update(model).where(key == row.id).values(id=key)
                                .execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    else:
        found = session.execute(select(key).where(key == row.id).with_for_update()).first() is not None
    if not found:
        session.rollback()
        raise NotFound(kind=kind, name=str(getattr(row, "name", row.id)))
    session.refresh(row)


def guarded(session: Session, row: Any, if_match: str | None, current: Callable[[], str], *, kind: str) -> None:
    """With If-Match: lock ``row``, then 412 unless its current ETag (``current()``) matches."""
    if if_match is None:
        return
    lock_row(session, row, kind=kind)
    require(if_match, current, kind=kind, name=str(getattr(row, "name", row.id)), session=session)


# --------------------------------------------------------------------------- answers
def tagged(body: bytes, if_none_match: str | None = None, *, status_code: int = 200, location: str | None = None,
           media_type: str = "application/json") -> Response:
    """``body`` with its ETag (and Location); 304 instead when ``if_none_match`` (a GET's) names it."""
    tag = tag_of(body)
    headers = {"ETag": tag}
    if location is not None:
        headers["Location"] = location
    if if_none_match is not None and if_none_match_hit(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, status_code=status_code, media_type=media_type, headers=headers)


def tagged_json(data: Any, if_none_match: str | None = None, *, status_code: int = 200,
                location: str | None = None) -> Response:
    return tagged(json_bytes(data), if_none_match, status_code=status_code, location=location)


def json_bytes(data: Any) -> bytes:
    """A response body: a pydantic model as pydantic writes it, anything else through orjson."""
    dump = getattr(data, "model_dump_json", None)
    return dump().encode() if dump is not None else dumps(data)


def json_tag(data: Any) -> str:
    """The ETag ``tagged_json(data)`` answers."""
    return tag_of(json_bytes(data))


# --------------------------------------------------------------------------- the OpenAPI document
ETAG_HEADER: dict[str, Any] = {"ETag": {"description": "strong entity tag of the object as answered: "
                                                       "send it back in If-Match to change it safely",
                                        "schema": {"type": "string"}}}
LOCATION_HEADER: dict[str, Any] = {"Location": {"description": "the new object's URL",
                                                "schema": {"type": "string"}}}
Responses = dict[int | str, dict[str, Any]]
NOT_MODIFIED: Responses = {
    304: {"description": "not modified: If-None-Match names the current ETag (no body)", "headers": ETAG_HEADER},
}
PRECONDITION: Responses = {
    412: {"description": "If-Match names another version of the object: it changed since it was read, "
                         "nothing was changed (read it again, then retry)"},
}


def read_responses(extra: Responses | None = None) -> Responses:
    """``responses=`` of a GET of one object: its 200 with the ETag header, and the 304."""
    return {200: {"headers": ETAG_HEADER}, **NOT_MODIFIED, **(extra or {})}


def write_responses(extra: Responses | None = None, *, answers_object: bool = True) -> Responses:
    """``responses=`` of a conditional PATCH/PUT (``answers_object``: its 200 carries the new ETag) or DELETE."""
    out: Responses = {**PRECONDITION, **(extra or {})}
    if answers_object:
        out[200] = {"headers": ETAG_HEADER}
    return out


def created_responses(extra: Responses | None = None) -> Responses:
    """``responses=`` of a POST that creates one object: its 201 with Location and ETag."""
    return {201: {"headers": {**LOCATION_HEADER, **ETAG_HEADER}}, **(extra or {})}


def location(request: Request, name: str) -> str:
    """The URL of the object ``name`` created by a POST to ``request``'s collection."""
    return f"{request.url.path.rstrip('/')}/{quote(name, safe='')}"
