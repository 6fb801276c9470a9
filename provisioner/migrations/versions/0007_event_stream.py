"""event_stream (the numbered events of GET /api/v1/events/stream) and event_stream_mark

Issue 16, item 1: an outbox written in the transaction of each change (provisioner/event_outbox.py);
event_stream_mark's one row remembers the newest pruned id, so a resume older than the retention
is told what it lost.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('event_stream',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('host_name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('rack_name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('progress', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_event_stream_created_at'), 'event_stream', ['created_at'], unique=False)
    op.create_table('event_stream_mark',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pruned_through', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('event_stream_mark')
    op.drop_index(op.f('ix_event_stream_created_at'), table_name='event_stream')
    op.drop_table('event_stream')
