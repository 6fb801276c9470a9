"""Alembic: upgrading an empty database gives exactly the schema of models.py (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import provisioner.models  # noqa: F401
from provisioner import migrate
from provisioner.db import get_engine

pytestmark = pytest.mark.integration


def test_upgrade_empty_db_matches_models(empty_settings) -> None:  # type: ignore[no-untyped-def]
    engine = get_engine(empty_settings)
    assert inspect(engine).get_table_names() == []
    migrate.upgrade(empty_settings)
    migrate.upgrade(empty_settings)  # idempotent: a second start does nothing
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
        assert ctx.get_current_revision() is not None
    assert diff == [], (
        "models.py and the migrations differ; add a revision (see provisioner/migrations/README): " + repr(diff)
    )
    tables = set(inspect(engine).get_table_names())
    assert {"host", "nic", "rack", "profile", "task", "event", "apitoken", "alembic_version"} <= tables
