"""per-pool and per-project rollups of allocated, used and available GPUs (dashboards)

Revision ID: 0018
Revises: 0013
Create Date: 2026-12-05 07:00 (operations dashboards)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pool_rollups',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('resolution_s', sa.Integer(), nullable=False),
        sa.Column('pool', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('bucket', sa.Float(), nullable=False),
        sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('capacity_gpus', sa.Integer(), nullable=False),
        sa.Column('allocated_gpu_s', sa.Float(), nullable=False),
        sa.Column('used_gpu_s', sa.Float(), nullable=False),
        sa.Column('energy_j', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('resolution_s', 'pool', 'bucket', 'project_id', name='uq_pool_rollups_key'),
    )
    with op.batch_alter_table('pool_rollups', schema=None) as batch_op:
        batch_op.create_index('ix_pool_rollups_bucket', ['resolution_s', 'bucket'], unique=False)
        batch_op.create_index('ix_pool_rollups_project', ['resolution_s', 'project_id', 'bucket'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pool_rollups', schema=None) as batch_op:
        batch_op.drop_index('ix_pool_rollups_project')
        batch_op.drop_index('ix_pool_rollups_bucket')
    op.drop_table('pool_rollups')
