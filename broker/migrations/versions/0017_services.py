"""services: replicated, health-checked long-running workloads; replicas are jobs

Revision ID: 0017
Revises: 0013
Create Date: 2026-12-05 07:00 (inference services)
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('service_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('replica_index', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('service_revision', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('port', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('preemptible', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.create_index('ix_jobs_service_id', ['service_id'])
    op.create_table(
        'services',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=64), sa.ForeignKey('projects.id'), nullable=False),
        sa.Column('workload_class', sa.String(length=32), nullable=False),
        sa.Column('owner_token_id', sa.String(length=32), nullable=True),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('stable_revision', sa.Integer(), nullable=False),
        sa.Column('min_replicas', sa.Integer(), nullable=False),
        sa.Column('max_replicas', sa.Integer(), nullable=False),
        sa.Column('desired_replicas', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('message', sa.String(), nullable=False),
        sa.Column('pending_code', sa.String(length=64), nullable=True),
        sa.Column('pending_message', sa.String(), nullable=False),
        sa.Column('pending_details', sa.JSON(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('next_start_at', sa.Float(), nullable=True),
        sa.Column('scaled_at', sa.Float(), nullable=True),
        sa.Column('api_key_hashes', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('deleted_at', sa.Float(), nullable=True),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('project_id', 'name', name='uq_services_project_name'),
    )
    op.create_index('ix_services_project_id', 'services', ['project_id'])
    op.create_table(
        'service_revisions',
        sa.Column('service_id', sa.String(length=32), sa.ForeignKey('services.id'), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('template', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('message', sa.String(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('service_id', 'number'),
    )
    op.create_table(
        'service_replicas',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('service_id', sa.String(length=32), nullable=False),
        sa.Column('index', sa.Integer(), nullable=False),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('port', sa.Integer(), nullable=True),
        sa.Column('ready', sa.Boolean(), nullable=False),
        sa.Column('live_failures', sa.Integer(), nullable=False),
        sa.Column('ready_failures', sa.Integer(), nullable=False),
        sa.Column('ready_since', sa.Float(), nullable=True),
        sa.Column('last_probe_at', sa.Float(), nullable=True),
        sa.Column('message', sa.String(), nullable=False),
        sa.PrimaryKeyConstraint('job_id'),
    )
    op.create_index('ix_service_replicas_service_id', 'service_replicas', ['service_id'])
    op.create_table(
        'service_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('service_id', sa.String(length=32), nullable=False),
        sa.Column('ts', sa.Float(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('message', sa.String(), nullable=False),
        sa.Column('details', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_service_events_service_id', 'service_events', ['service_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_service_events_service_id', table_name='service_events')
    op.drop_table('service_events')
    op.drop_index('ix_service_replicas_service_id', table_name='service_replicas')
    op.drop_table('service_replicas')
    op.drop_table('service_revisions')
    op.drop_index('ix_services_project_id', table_name='services')
    op.drop_table('services')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_service_id')
        batch.drop_column('preemptible')
        batch.drop_column('port')
        batch.drop_column('service_revision')
        batch.drop_column('replica_index')
        batch.drop_column('service_id')
