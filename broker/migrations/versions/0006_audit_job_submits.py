"""audit entries sealed from job events (job submits)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 21:30 (job submits in the hash-chained audit log)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_log') as batch:
        batch.add_column(sa.Column('source_event_id', sa.Integer(), nullable=True))
    op.create_index('ux_audit_source_event', 'audit_log', ['source_event_id'], unique=True)


def downgrade() -> None:
    op.drop_index('ux_audit_source_event', table_name='audit_log')
    with op.batch_alter_table('audit_log') as batch:
        batch.drop_column('source_event_id')
