"""Alembic environment: the target is SQLModel.metadata (every table in provisioner.models)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import provisioner.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from provisioner.db import get_engine

target_metadata = SQLModel.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the alembic command line: use PROV_DATABASE_URL / the data directory's SQLite file
    with get_engine().begin() as conn:
        _run(conn)
