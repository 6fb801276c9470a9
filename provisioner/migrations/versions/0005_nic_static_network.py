"""nic static addresses (address, gateway, nameservers, search, mtu); host bonds and VLANs

The installed OS's network (provisioner/netspec.py). Existing rows read as before: no
static address (DHCP on the boot NIC), no bonds, no VLANs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.add_column(sa.Column('network_bonds', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('network_vlans', sa.JSON(), server_default='[]', nullable=False))

    with op.batch_alter_table('nic', schema=None) as batch_op:
        batch_op.add_column(sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('gateway', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('nameservers', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('search', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('mtu', sa.Integer(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not batch mode: a batch rebuild drops and
    # re-creates host, and with foreign keys on, dropping host deletes every NIC and event row
    # (ON DELETE CASCADE) - a downgrade must not lose the inventory.
    for column in ('mtu', 'search', 'nameservers', 'gateway', 'address'):
        op.drop_column('nic', column)
    for column in ('network_vlans', 'network_bonds'):
        op.drop_column('host', column)
