"""project secrets, datasets with grants and access records; jobs name secrets and mounts

Revision ID: 0013
Revises: 0016
Create Date: 2026-12-04 18:20 (hospital data, secrets and job isolation)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('secrets', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('mounts', sa.JSON(), nullable=False, server_default='[]'))
    op.create_table(
        'project_secrets',
        sa.Column('project_id', sa.String(length=64), sa.ForeignKey('projects.id'), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('ciphertext', sa.String(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('deleted', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('project_id', 'name', 'version'),
    )
    op.create_table(
        'datasets',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('description', sa.String(), nullable=False),
        sa.Column('department_id', sa.String(length=64), sa.ForeignKey('departments.id'), nullable=False),
        sa.Column('path', sa.String(length=1024), nullable=False),
        sa.Column('shared', sa.Boolean(), nullable=False),
        sa.Column('nodes', sa.JSON(), nullable=False),
        sa.Column('pools', sa.JSON(), nullable=False),
        sa.Column('writable', sa.Boolean(), nullable=False),
        sa.Column('retention', sa.String(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_index('ix_datasets_department_id', 'datasets', ['department_id'])
    op.create_table(
        'dataset_grants',
        sa.Column('dataset_id', sa.String(length=32), sa.ForeignKey('datasets.id'), nullable=False),
        sa.Column('project_id', sa.String(length=64), sa.ForeignKey('projects.id'), nullable=False),
        sa.Column('mode', sa.String(length=2), nullable=False),
        sa.Column('allow_process', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('dataset_id', 'project_id'),
    )
    op.create_table(
        'dataset_access',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('dataset_id', sa.String(length=32), sa.ForeignKey('datasets.id'), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('project_id', sa.String(length=64), nullable=False),
        sa.Column('mode', sa.String(length=2), nullable=False),
        sa.Column('path', sa.String(length=1024), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_dataset_access_dataset_id', 'dataset_access', ['dataset_id'])


def downgrade() -> None:
    op.drop_index('ix_dataset_access_dataset_id', table_name='dataset_access')
    op.drop_table('dataset_access')
    op.drop_table('dataset_grants')
    op.drop_index('ix_datasets_department_id', table_name='datasets')
    op.drop_table('datasets')
    op.drop_table('project_secrets')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('mounts')
        batch.drop_column('secrets')
