"""Alembic revisions, applied in order by provisioner.migrate.upgrade."""
