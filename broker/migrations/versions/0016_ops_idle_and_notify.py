"""idle-allocation policy and flags; notification subscriptions, outbox and marks

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 18:30 (idle-GPU reclaim and notifications)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'idle_policies',
        sa.Column('pool', sa.String(64), primary_key=True),
        sa.Column('util_below_pct', sa.Float(), nullable=False),
        sa.Column('memory_below_mib', sa.Float(), nullable=False),
        sa.Column('window_s', sa.Float(), nullable=False),
        sa.Column('reclaim', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'idle_allocations',
        sa.Column('job_id', sa.String(32), primary_key=True),
        sa.Column('attempt', sa.Integer(), primary_key=True),
        sa.Column('project_id', sa.String(64), nullable=False),
        sa.Column('pool', sa.String(64), nullable=False),
        sa.Column('workload_class', sa.String(32), nullable=False),
        sa.Column('gpus', sa.Integer(), nullable=False),
        sa.Column('flagged_at', sa.Float(), nullable=False),
        sa.Column('util_max_pct', sa.Float(), nullable=True),
        sa.Column('memory_max_mib', sa.Float(), nullable=True),
        sa.Column('cleared_at', sa.Float(), nullable=True),
        sa.Column('reclaimed_at', sa.Float(), nullable=True),
    )
    op.create_index('ix_idle_allocations_open', 'idle_allocations', ['job_id'],
                    postgresql_where=sa.text('cleared_at IS NULL'), sqlite_where=sa.text('cleared_at IS NULL'))
    op.create_table(
        'notify_subscriptions',
        sa.Column('id', sa.String(32), primary_key=True),
        sa.Column('owner', sa.String(200), nullable=False),
        sa.Column('project_id', sa.String(64), nullable=True),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('target', sa.String(500), nullable=False),
        sa.Column('scope_all', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_index('ix_notify_subscriptions_owner', 'notify_subscriptions', ['owner'])
    op.create_table(
        'notify_outbox',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('subscription_id', sa.String(32), nullable=False),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('target', sa.String(500), nullable=False),
        sa.Column('event', sa.String(64), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('next_at', sa.Float(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('delivered_at', sa.Float(), nullable=True),
        sa.Column('dead', sa.Boolean(), nullable=False),
        sa.Column('last_error', sa.String(), nullable=False),
    )
    op.create_index('ix_notify_outbox_subscription_id', 'notify_outbox', ['subscription_id'])
    op.create_index('ix_notify_outbox_due', 'notify_outbox', ['next_at'],
                    postgresql_where=sa.text('delivered_at IS NULL AND NOT dead'),
                    sqlite_where=sa.text('delivered_at IS NULL AND NOT dead'))
    op.create_table(
        'notify_marks',
        sa.Column('name', sa.String(64), primary_key=True),
        sa.Column('value', sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('notify_marks')
    op.drop_index('ix_notify_outbox_due', table_name='notify_outbox')
    op.drop_index('ix_notify_outbox_subscription_id', table_name='notify_outbox')
    op.drop_table('notify_outbox')
    op.drop_index('ix_notify_subscriptions_owner', table_name='notify_subscriptions')
    op.drop_table('notify_subscriptions')
    op.drop_index('ix_idle_allocations_open', table_name='idle_allocations')
    op.drop_table('idle_allocations')
    op.drop_table('idle_policies')
