"""One definition per object: tables and API bodies share an ``XBase`` (schemas.py, models.py)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from sqlmodel import SQLModel

from provisioner import models, schemas

# (base, table, request bodies, response) per object with a shared base
LADDERS = [
    (schemas.RackBase, models.Rack, [schemas.RackCreate], schemas.RackPublic),
    (schemas.ProfileBase, models.Profile, [schemas.ProfileCreate], schemas.ProfilePublic),
    (schemas.TaskBase, models.Task, [], schemas.TaskPublic),
    (schemas.EventBase, models.Event, [], schemas.EventPublic),
]
SECRETS = ("password", "token", "ssh_host_key")


@pytest.mark.parametrize(("base", "table", "bodies", "public"), LADDERS, ids=lambda v: getattr(v, "__name__", ""))
def test_table_and_api_take_their_fields_from_the_base(base: type[SQLModel], table: type[SQLModel],
                                                       bodies: list[type[BaseModel]], public: type[BaseModel]) -> None:
    shared = list(base.model_fields)
    columns = list(table.__table__.c.keys())  # type: ignore[attr-defined]
    assert columns[0] == "id" and columns[1:1 + len(shared)] == shared  # the id column stays first
    for body in bodies:
        assert list(body.model_fields) == shared
        assert body.model_config.get("extra") == "forbid"
    assert list(public.model_fields)[:1 + len(shared)] == ["id", *shared]
    assert not [f for f in public.model_fields if any(s in f for s in SECRETS)]
    # every field of a response is in the response (the OpenAPI document says "required")
    props = public.model_json_schema(mode="serialization")
    assert set(props["required"]) == set(public.model_fields)


@pytest.mark.parametrize(("base", "update"), [(schemas.RackBase, schemas.RackUpdate),
                                              (schemas.ProfileBase, schemas.ProfileUpdate)])
def test_update_bodies_keep_the_base_constraints(base: type[SQLModel], update: type[BaseModel]) -> None:
    """XUpdate restates the fields as optional (as the FastAPI template does); nothing may drift."""
    for name, field in update.model_fields.items():
        theirs = base.model_fields[name]
        assert field.annotation == theirs.annotation | None, name
        assert field.default is None, name
        constraints = [repr(m) for m in theirs.metadata if type(m).__name__ != "FieldInfoMetadata"]
        assert [repr(m) for m in field.metadata] == constraints, name  # (pydantic's pattern has no __eq__)


def test_host_public_has_no_secrets() -> None:
    nested = [f"bmc.{k}" for k in schemas.BmcPublic.model_fields]
    assert not [f for f in [*schemas.HostPublic.model_fields, *nested] if any(s in f for s in SECRETS)
                and f != "bmc.password_set"]
