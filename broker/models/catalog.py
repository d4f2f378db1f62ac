"""Catalog tables: departments, projects, pools, nodes, and quotas per flavor."""

from __future__ import annotations

from typing import Optional

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.models.base import json_field, now

# --------------------------------------------------------------------------- departments and projects


class Department(SQLModel, table=True):
    __tablename__ = "departments"

    id: str = Field(primary_key=True, max_length=64)  # "ouh"
    name: str = Field(max_length=200)  # "OUH"
    weight: float = 1.0
    budget_gpu_hours: Optional[float] = None  # per month; None = unlimited
    created_at: float = Field(default_factory=now)


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: str = Field(primary_key=True, max_length=64)  # "ouh-liver"
    department_id: str = Field(foreign_key="departments.id", index=True, max_length=64)
    name: str = Field(default="", max_length=200)
    weight: float = 1.0
    budget_gpu_hours: Optional[float] = None  # per month; None = unlimited
    max_running: Optional[int] = None  # concurrency limit per project; None = no limit
    max_pending: Optional[int] = None
    # runtime 'process' jobs run on the host as the broker's user: only where a platform-admin
    # enabled it for this project (and the deployment allows it at all)
    allow_process_runtime: bool = False
    created_at: float = Field(default_factory=now)


# --------------------------------------------------------------------------- capacity


class Pool(SQLModel, table=True):
    __tablename__ = "pools"

    name: str = Field(primary_key=True, max_length=64)
    workload_class: str = Field(max_length=32)  # "operation" | "innovation"
    lend_to_innovation: bool = False
    description: str = ""


class Node(SQLModel, table=True):
    """A node as last observed (executor inventory and agent heartbeats)."""

    __tablename__ = "nodes"

    id: str = Field(primary_key=True, max_length=200)
    hostname: str = Field(default="", max_length=255)
    address: str = Field(default="", max_length=255)
    pool: str = Field(index=True, max_length=64)  # effective: pool_override or the executor's label
    pool_override: Optional[str] = Field(default=None, max_length=64)  # set by a platform-admin
    observed_pool: Optional[str] = Field(default=None, max_length=64)  # the executor's label, last sync
    gpu_model: str = Field(default="", max_length=128)
    gpus: int = 0
    cpus: float = 0.0
    memory_gb: float = 0.0
    state: str = Field(default="ready", max_length=32)  # health: scheduler.model.NodeState values
    state_reason: str = ""
    # An admin's cordon/drain lives beside the health state, never in it: lifting it cannot
    # make a node the health checks or the executor took out schedulable.
    admin_state: Optional[str] = Field(default=None, max_length=32)  # None | "cordoned" | "draining"
    admin_reason: str = ""
    held_until: Optional[float] = None  # lost a running worker: no new work before this time
    last_heartbeat: Optional[float] = None
    labels: dict = json_field()
    updated_at: float = Field(default_factory=now)

    def effective_state(self) -> tuple[str, str]:
        """(state, reason) for scheduling and display: an admin's cordon/drain wins over a
        ready node; a node out for health reasons shows that reason (it is out either way)."""
        if self.admin_state and self.state == "ready":
            return self.admin_state, self.admin_reason
        return self.state, self.state_reason


class QuotaRow(SQLModel, table=True):
    """One quota figure: owner (department or project) x flavor (pool, gpu model) x resource.

    Invariant (validated by the admin quota service): guaranteed <= nominal <= limit;
    `limit` None means unlimited.
    """

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("owner_kind", "owner_id", "pool", "gpu_model", "resource"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    owner_kind: str = Field(max_length=16)  # "department" | "project"
    owner_id: str = Field(max_length=64, index=True)
    pool: str = Field(max_length=64)
    gpu_model: str = Field(default="", max_length=128)
    resource: str = Field(max_length=16)  # "gpus" | "cpus" | "memory_gb"
    guaranteed: float = 0.0
    nominal: float = 0.0
    limit: Optional[float] = None
    version: int = 1  # ETag for If-Match updates
    updated_at: float = Field(default_factory=now)
