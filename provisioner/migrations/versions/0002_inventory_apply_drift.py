"""inventory_apply: the latest periodic drift check (when and what it found)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('inventory_apply', schema=None) as batch_op:
        batch_op.add_column(sa.Column('drift_checked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('drift', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('inventory_apply', schema=None) as batch_op:
        batch_op.drop_column('drift')
        batch_op.drop_column('drift_checked_at')
