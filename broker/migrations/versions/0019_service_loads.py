"""every broker's requests in flight per service, for the leader's autoscaler

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 12:45 (services with several brokers)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'service_loads',
        sa.Column('broker_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('service_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('inflight', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('broker_id', 'service_id'),
    )


def downgrade() -> None:
    op.drop_table('service_loads')
