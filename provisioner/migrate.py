"""Schema migrations (Alembic), run by ``prov serve`` before it listens.

The revisions live in provisioner/migrations/versions; see
provisioner/migrations/README for how to add one after changing models.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from provisioner.db import get_engine
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # env.py uses this connection instead of building its own engine.
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    """Bring the database named by ``settings`` to ``revision`` (idempotent)."""
    settings = settings or get_settings()
    engine = get_engine(settings)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    log.info("database schema at %s", revision)


def revision(message: str, settings: Settings | None = None) -> None:
    """Autogenerate a new revision from the difference between head and models.py."""
    settings = settings or get_settings()
    upgrade(settings)
    engine = get_engine(settings)
    with engine.begin() as conn:
        command.revision(alembic_config(conn), message=message, autogenerate=True)


if __name__ == "__main__":  # python -m provisioner.migrate revision "message"
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "revision":
        revision(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "upgrade":
        upgrade()
    else:
        sys.exit('usage: python -m provisioner.migrate upgrade | revision "message"')
