"""Hosts as HostPublic-shaped dicts straight from rows, for the API's fast host pages.

``schemas.HostPublic`` is the one definition of a host's JSON. Pages and single hosts are built
as plain dicts and serialised once (routes/hosts.py, api/responses.py): validating, then dumping,
100 models would cost more than the queries (bench/api). The row -> dict mapping is derived from
HostPublic's fields, so a field added there appears in pages without being restated here:

* a field named like a host column is that column; a nested model's fields are the columns
  named with its field's prefix (``bmc.kind`` <- ``bmc_kind``);
* the few others are in ``_SOURCES`` (another column, or a name subquery) or ``_COMPUTED``;
  a field in neither and with no column is a TypeError at import time, not a silent gap.

Timestamps and JSON columns are converted by their column type, and free text that may quote a
secret (``_MASKED``) goes through secret_store.mask. Keys come in HostPublic's order, as pydantic's.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_origin

import orjson
from pydantic import BaseModel
from sqlalchemy import JSON, DateTime, Select, String, bindparam, literal, type_coerce
from sqlalchemy import select as sa_select
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

from provisioner import lifecycle, secret_store
from provisioner import states as S
from provisioner.models import Host, Nic, Profile, Rack
from provisioner.schemas import HostPublic, NicPublic

Nics = dict[int, list[dict[str, Any]]]
_Build = Callable[[Sequence[Any], Nics], dict[str, Any]]

# Appended to every host row: the names of its rack and profile (subqueries, see one_host_select).
EXTRA = ("rack_name", "profile_name")
# Fields that are another column or an EXTRA name, and the function converting it (None: by type).
_SOURCES: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "rack": ("rack_name", None),
    "profile": ("profile_name", None),
    "bmc.password_set": ("bmc_password_enc", bool),  # whether one is set: the ciphertext never leaves
}
# Columns no field may copy as they are, so that a slip in the schema cannot publish them:
# ciphertexts (*_enc), digests of secrets (*_hash) and the host's SSH key.
_NEVER_SUFFIXES = ("_enc", "_hash")
_NEVER = frozenset({"ssh_host_key"})
_MASKED = frozenset({"last_error", "bmc.error"})
_ALLOWED = {state: lifecycle.allowed_events(state) for state in S.ALL}
# Fields computed from the dict built so far and the page's NICs (read by their own query).
_COMPUTED: dict[str, Callable[[dict[str, Any], Nics], Any]] = {
    "nics": lambda d, nics: nics.get(d["id"], []),
    "allowed_events": lambda d, _: list(_ALLOWED.get(d["state"]) or lifecycle.allowed_events(d["state"])),
}


@dataclass(frozen=True)
class _Field:
    """Where one field of a public model comes from, and how its value is converted."""

    key: str
    source: str = "id"  # a host column or EXTRA name ("id": a placeholder for nested/computed fields)
    how: str | Callable[[Any], Any] = "plain"  # a _converters() name, or a function
    nested: tuple[_Field, ...] = ()
    computed: Callable[[dict[str, Any], Nics], Any] | None = None


def _is_datetime(column_type: Any) -> bool:
    return isinstance(column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type, DateTime)


def spec(model: type[BaseModel], path: str = "", prefix: str = "") -> tuple[_Field, ...]:
    """One ``_Field`` per field of ``model``, in order (``path``, ``prefix``: a nested model's)."""
    host_c = Host.__table__.c  # type: ignore[attr-defined]
    out: list[_Field] = []
    for key, field in model.model_fields.items():
        full, ann = path + key, field.annotation
        if full in _COMPUTED:
            out.append(_Field(key, computed=_COMPUTED[full]))
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append(_Field(key, nested=spec(ann, f"{full}.", f"{prefix}{key}_")))
            continue
        source, fn = _SOURCES.get(full, (prefix + key, None))
        secret = source in _NEVER or source.endswith(_NEVER_SUFFIXES)
        if source not in EXTRA and (source not in host_c or (fn is None and secret)):
            raise TypeError(f"{model.__name__}.{key}: no host column {source!r} to read it from "
                            "(map it in host_json._SOURCES or _COMPUTED)")
        column_type = host_c[source].type if source in host_c else None
        how: str | Callable[[Any], Any] = "plain"
        if fn is not None:
            how = fn
        elif full in _MASKED:
            how = "mask"
        elif isinstance(column_type, JSON):
            shape = get_origin(ann) or ann
            how = "json_list" if shape is list else "json_dict" if shape is dict else "json"
        elif column_type is not None and _is_datetime(column_type):
            how = "ts"
        out.append(_Field(key, source, how))
    return tuple(out)


def columns(fields: tuple[_Field, ...]) -> list[str]:
    """The host columns ``fields`` read, in order of first use."""
    found: list[str] = []
    for f in fields:
        for name in columns(f.nested) if f.nested else [] if f.computed else [f.source]:
            if name not in found and name not in EXTRA:
                found.append(name)
    return found


# --------------------------------------------------------------------------- conversions
def _masked(text: str | None) -> str | None:
    return secret_store.mask(text) if text else None


def _same(value: Any) -> Any:
    return value


def _sqlite_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN/Infinity, which json.dumps (SQLAlchemy's serializer) can write
        return json.loads(text)


def sqlite_iso(text: str | None) -> str | None:
    """SQLAlchemy's SQLite text for a UTC timestamp ("2026-01-02 03:04:05.678901", always six
    fraction digits) as the ISO 8601 text pydantic writes for the aware datetime ("…T03:04:05.678901Z",
    no fraction when it is zero): a string operation instead of parsing and re-formatting the
    datetime, six times per host row."""
    if text is None:
        return None
    if len(text) == 26 and text[10] == " " and text[19] == ".":
        return f"{text[:10]}T{text[11:19]}Z" if text.endswith(".000000") else f"{text[:10]}T{text[11:]}Z"
    dt = datetime.fromisoformat(text)  # written some other way: parse it properly
    return (dt.replace(tzinfo=UTC) if dt.utcoffset() is None else dt.astimezone(UTC)).isoformat() \
        .replace("+00:00", "Z")


def _converters(raw: bool) -> dict[str, Callable[[Any], Any] | None]:
    """The function per ``_Field.how`` name (None: the value is kept). ``raw`` (SQLite): timestamps and
    JSON arrive as their stored text (see host_columns); else as aware UTC datetimes, which
    api.responses writes as pydantic does (…Z), and Python values."""
    js = _sqlite_json if raw else _same
    return {
        "plain": None, "mask": _masked, "ts": sqlite_iso if raw else None, "json": _sqlite_json if raw else None,
        "json_list": lambda v: list(js(v) or ()), "json_dict": lambda v: dict(js(v) or {}),
    }


def compile_fields(fields: tuple[_Field, ...], index: dict[str, int], raw: bool) -> _Build:
    """The row -> dict function for ``fields``; a row holds ``index``'s names at its positions.

    One itemgetter copies every value into a dict of the right key order, then the few that need
    it are converted in place (replacing a key keeps its place): cheaper than a call per field."""
    conv = _converters(raw)
    keys = tuple(f.key for f in fields)
    at = [index[f.source] for f in fields]
    take = operator.itemgetter(*at) if len(at) > 1 else lambda row: (row[at[0]],)
    fixes = tuple((f.key, fn) for f in fields if not (f.nested or f.computed)
                  if (fn := f.how if callable(f.how) else conv[f.how]) is not None)
    nested = tuple((f.key, compile_fields(f.nested, index, raw)) for f in fields if f.nested)
    computed = tuple((f.key, f.computed) for f in fields if f.computed)

    def build(row: Sequence[Any], nics: Nics) -> dict[str, Any]:
        d = dict(zip(keys, take(row), strict=False))
        for key, fn in fixes:
            d[key] = fn(d[key])
        for key, sub in nested:
            d[key] = sub(row, nics)
        for key, comp in computed:
            d[key] = comp(d, nics)
        return d

    return build


_HOST = spec(HostPublic)
HOST_COLUMNS = tuple(columns(_HOST))  # what a host row holds, followed by the EXTRA names
_INDEX = {name: i for i, name in enumerate((*HOST_COLUMNS, *EXTRA))}
_BUILD = {raw: compile_fields(_HOST, _INDEX, raw) for raw in (False, True)}
_host_values = operator.attrgetter(*HOST_COLUMNS)
_NIC_KEYS = tuple(NicPublic.model_fields)  # NicPublic's fields are the Nic columns of the same name


# --------------------------------------------------------------------------- queries
@functools.cache
def host_columns(raw: bool) -> list[Any]:
    """HOST_COLUMNS as select columns (built once: constructing a 30-column select costs ~0.3 ms).

    ``raw`` (SQLite): timestamps and JSON columns as their stored text, converted by
    ``sqlite_iso``/``_sqlite_json`` - cheaper than SQLAlchemy's parse-then-reformat.
    """
    host_t = Host.__table__  # type: ignore[attr-defined]
    cols = [host_t.c[c] for c in HOST_COLUMNS]
    return [type_coerce(c, String).label(c.name) if raw and (isinstance(c.type, JSON) or _is_datetime(c.type))
            else c for c in cols]


@functools.cache
def one_host_select(raw: bool) -> Select[Any]:
    """``host_columns`` plus the EXTRA names, for rows of ``from_rows`` (add the WHERE or a join)."""
    host_t = Host.__table__  # type: ignore[attr-defined]
    rack_t, prof_t = Rack.__table__, Profile.__table__  # type: ignore[attr-defined]
    rack = sa_select(rack_t.c.name).where(rack_t.c.id == host_t.c.rack_id).scalar_subquery().label("rack_name")
    prof = sa_select(prof_t.c.name).where(prof_t.c.id == host_t.c.profile_id).scalar_subquery() \
        .label("profile_name")
    return sa_select(*host_columns(raw), rack, prof)


@functools.cache
def _nics_select(many: bool) -> Select[Any]:
    """NICs (NicPublic's columns, then host_id) of the hosts in bind parameter ``ids`` (``many``: an
    expanding IN) or ``id``. Built once, with bind parameters: an ``in_()`` over literal values costs
    a bind object per id on every call."""
    nic_t = Nic.__table__  # type: ignore[attr-defined]
    cond = nic_t.c.host_id.in_(bindparam("ids", expanding=True)) if many else nic_t.c.host_id == bindparam("id")
    return sa_select(*(nic_t.c[k] for k in _NIC_KEYS), nic_t.c.host_id).where(cond).order_by(nic_t.c.id)


def _nics_by_host(session: Session, ids: list[int]) -> Nics:
    nics: Nics = {}
    if not ids:
        return nics
    params = {"ids": ids} if len(ids) > 1 else {"id": ids[0]}
    n = len(_NIC_KEYS)
    for row in session.connection().execute(_nics_select(len(ids) > 1), params):
        nics.setdefault(row[n], []).append(dict(zip(_NIC_KEYS, row, strict=False)))
    return nics


def from_rows(session: Session, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """HostPublic dicts for rows of ``one_host_select``: one more query, for NICs."""
    build = _BUILD[session.get_bind().dialect.name == "sqlite"]
    id_at = _INDEX["id"]
    nics = _nics_by_host(session, [r[id_at] for r in rows])
    return [build(r, nics) for r in rows]


def from_hosts(session: Session, hosts: list[Host]) -> list[dict[str, Any]]:
    """HostPublic dicts for Host objects: 2 extra queries whatever their number (no N+1)."""
    if not hosts:
        return []
    nics = _nics_by_host(session, [h.id for h in hosts if h.id is not None])
    rack_t, prof_t = Rack.__table__, Profile.__table__  # type: ignore[attr-defined]
    conn = session.connection()
    racks: dict[int | None, str | None] = {}
    profs: dict[int | None, str | None] = {}
    if len(hosts) == 1:  # the API's case: both names in one cached statement
        rid, pid = hosts[0].rack_id, hosts[0].profile_id
        row = conn.execute(sa_select(
            sa_select(rack_t.c.name).where(rack_t.c.id == rid).scalar_subquery(),
            sa_select(prof_t.c.name).where(prof_t.c.id == pid).scalar_subquery(),
        )).one()
        racks[rid], profs[pid] = row[0], row[1]
    else:
        rack_ids = {h.rack_id for h in hosts if h.rack_id is not None}
        prof_ids = {h.profile_id for h in hosts if h.profile_id is not None}
        if rack_ids or prof_ids:
            names = sa_select(literal("r").label("kind"), rack_t.c.id, rack_t.c.name) \
                .where(rack_t.c.id.in_(rack_ids)) \
                .union_all(sa_select(literal("p"), prof_t.c.id, prof_t.c.name).where(prof_t.c.id.in_(prof_ids)))
            for kind, ident, name in conn.execute(names):
                (racks if kind == "r" else profs)[ident] = name
    build = _BUILD[False]  # objects hold typed values on every back end
    return [build((*_host_values(h), racks.get(h.rack_id), profs.get(h.profile_id)), nics) for h in hosts]
