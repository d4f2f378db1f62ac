"""node admin state, hold-out deadline and observed pool

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 22:00 (cordon beside health; lost-worker hold; pool: null checks)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('observed_pool', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch.add_column(sa.Column('admin_state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch.add_column(sa.Column('admin_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                   server_default=''))
        batch.add_column(sa.Column('held_until', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes') as batch:
        for c in ('held_until', 'admin_reason', 'admin_state', 'observed_pool'):
            batch.drop_column(c)
