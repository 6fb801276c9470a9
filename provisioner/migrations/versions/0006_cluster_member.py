"""cluster_member (one row per prov serve process and its roles); rack.network

Scale-out (issue 14): every role process registers and heartbeats in cluster_member;
a conductor claims a silent member dead (provisioner/cluster.py). A rack belongs to a boot
agent's network through rack.network (a CIDR, NULL: any/the embedded boot service).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('cluster_member',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('hostname', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('networks', sa.JSON(), nullable=False),
    sa.Column('api_url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('heartbeat_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('taken_over_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cluster_member_state_heartbeat', 'cluster_member', ['state', 'heartbeat_at'], unique=False)

    with op.batch_alter_table('rack', schema=None) as batch_op:
        batch_op.add_column(sa.Column('network', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not batch mode: a batch rebuild drops and
    # re-creates rack, which host rows reference (as 0005's downgrade explains).
    op.drop_column('rack', 'network')
    op.drop_index('ix_cluster_member_state_heartbeat', table_name='cluster_member')
    op.drop_table('cluster_member')
