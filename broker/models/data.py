"""Governed data and secrets: project secrets (encrypted, versioned), datasets, grants, access.

Why a table per secret *version*: rotation adds a version and never overwrites one, so an
attempt that started with version 3 can say so in the audit log, and a rollback is a new
version with an old value. Values are Fernet tokens (`broker.services.secrets`): the
database never holds a plaintext secret.

Datasets are registered by admins and granted to projects; `dataset_access` is one row per
mount of a dataset by a job attempt (what `GET /api/v1/datasets/{id}/access` lists; the same
facts are in the hash-chained audit log).
"""

from __future__ import annotations

from typing import Optional

from sqlmodel import Field, SQLModel

from broker.models.base import json_field, new_id, now


class ProjectSecret(SQLModel, table=True):
    __tablename__ = "project_secrets"

    project_id: str = Field(foreign_key="projects.id", primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    ciphertext: str  # Fernet token of the value
    created_at: float = Field(default_factory=now)
    created_by: str = Field(default="", max_length=200)
    deleted: bool = False  # a deleted secret keeps its versions' metadata, not their values


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=128, unique=True)
    description: str = ""
    department_id: str = Field(foreign_key="departments.id", index=True, max_length=64)
    path: str = Field(max_length=1024)  # absolute path on the nodes that hold it
    # where it lives: "shared" (the path exists on every node) or names of nodes / pools
    shared: bool = False
    nodes: list = json_field(default_factory=list)
    pools: list = json_field(default_factory=list)
    writable: bool = False  # may a read-write grant mount it rw at all
    retention: str = ""
    created_at: float = Field(default_factory=now)
    created_by: str = Field(default="", max_length=200)


class DatasetGrant(SQLModel, table=True):
    __tablename__ = "dataset_grants"

    dataset_id: str = Field(foreign_key="datasets.id", primary_key=True, max_length=32)
    project_id: str = Field(foreign_key="projects.id", primary_key=True, max_length=64)
    mode: str = Field(default="ro", max_length=2)  # "ro" | "rw"
    # runtime 'process' jobs may get the host path (no read-only enforcement): platform-admin only
    allow_process: bool = False
    created_at: float = Field(default_factory=now)
    created_by: str = Field(default="", max_length=200)


class DatasetAccess(SQLModel, table=True):
    __tablename__ = "dataset_access"

    id: Optional[int] = Field(default=None, primary_key=True)
    dataset_id: str = Field(foreign_key="datasets.id", index=True, max_length=32)
    job_id: str = Field(max_length=32)
    attempt: int
    project_id: str = Field(max_length=64)
    mode: str = Field(max_length=2)
    path: str = Field(default="", max_length=1024)  # where the job saw it
    at: float = Field(default_factory=now)
