"""audit outbox marker on job events

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 22:10 (exact sealing of job submits into the audit chain)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_events') as batch:
        batch.add_column(sa.Column('sealed', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE job_events SET sealed = true WHERE id IN "
               "(SELECT source_event_id FROM audit_log WHERE source_event_id IS NOT NULL)")
    op.create_index('ix_job_events_unsealed', 'job_events', ['id'],
                    postgresql_where=sa.text("kind = 'submitted' AND NOT sealed"),
                    sqlite_where=sa.text("kind = 'submitted' AND NOT sealed"))


def downgrade() -> None:
    op.drop_index('ix_job_events_unsealed', table_name='job_events')
    with op.batch_alter_table('job_events') as batch:
        batch.drop_column('sealed')
