"""Alembic migrations (a package so that wheels ship env.py and the revisions)."""
