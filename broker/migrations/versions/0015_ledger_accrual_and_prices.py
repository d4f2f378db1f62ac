"""ledger accrual of running attempts, and prices per pool for usage reports

Revision ID: 0015
Revises: 0012
Create Date: 2026-12-04 18:30 (long-running attempts accrue hourly; reports price GPU-hours and kWh)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger') as batch:
        batch.add_column(sa.Column('accrued_to', sa.Float(), nullable=True))
    op.create_table(
        'pool_prices',
        sa.Column('pool', sa.String(length=64), nullable=False),
        sa.Column('gpu_hour', sa.Float(), nullable=False),
        sa.Column('kwh', sa.Float(), nullable=False),
        sa.Column('currency', sa.String(length=8), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('updated_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('pool'),
    )


def downgrade() -> None:
    op.drop_table('pool_prices')
    with op.batch_alter_table('ledger') as batch:
        batch.drop_column('accrued_to')
