"""when an attempt's workers were last seen alive

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 16:20 (a LOST attempt is charged up to when it was last seen alive)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.add_column(sa.Column('last_seen_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.drop_column('last_seen_at')
