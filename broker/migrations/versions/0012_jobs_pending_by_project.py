"""pending jobs by project: the index behind the pending cap

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:30 (every submit counts its project's pending jobs)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # partial: only PENDING rows, so the count per project reads the queue, never the history
    op.create_index('ix_jobs_pending_project', 'jobs', ['project_id'],
                    postgresql_where=sa.text("status = 'PENDING'"), sqlite_where=sa.text("status = 'PENDING'"))


def downgrade() -> None:
    op.drop_index('ix_jobs_pending_project', table_name='jobs')
