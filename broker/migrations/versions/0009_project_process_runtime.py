"""per-project permission for runtime 'process' jobs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 15:30 (host processes only for projects a platform-admin enables)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('projects') as batch:
        batch.add_column(sa.Column('allow_process_runtime', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('projects') as batch:
        batch.drop_column('allow_process_runtime')
