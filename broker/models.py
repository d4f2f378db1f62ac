"""Table rows (SQLModel). The DB is the single source of truth.

Conventions:
- every time is float epoch seconds (the scheduler's clock), never a naive datetime;
- ids are strings: slugs for departments/projects ("ouh", "ouh-liver"), names for pools and
  nodes, short random hex for jobs and tokens;
- JSON columns hold small lists/maps (command, env, labels, details); they are never queried;
- `Job.version` is bumped by every state change (`broker.jobstate.transition`), which makes
  compare-and-set updates possible: two schedulers or a restart can never double-admit.

API shapes live in `broker.schemas`; these classes are rows only.
"""

from __future__ import annotations

import enum
import secrets
import time
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint, false, text
from sqlmodel import Field, SQLModel


def new_id(nbytes: int = 8) -> str:
    """Short random hex id (16 chars, 64 bits: a collision among a million jobs has odds of
    about 3e-8, and a colliding insert is retried with a new id anyway)."""
    return secrets.token_hex(nbytes)


def now() -> float:
    return time.time()


class JobStatus(str, enum.Enum):
    PENDING = "PENDING"
    ADMITTED = "ADMITTED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"  # victim chosen; its workers are being stopped
    LOST = "LOST"  # workers vanished (node loss); goes back to PENDING or FAILED

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def holds_resources(self) -> bool:
        """Admitted work holds its placement until its workers are released."""
        return self in HOLDING


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
HOLDING = frozenset({JobStatus.ADMITTED, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.PREEMPTED, JobStatus.LOST})


def _json(**kw: Any) -> Any:
    return Field(default_factory=kw.pop("default_factory", dict), sa_column=Column(JSON, nullable=False))


# --------------------------------------------------------------------------- tenancy


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
    max_running: Optional[int] = None  # concurrency limits (issue 4); None = no limit
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
    labels: dict = _json()
    updated_at: float = Field(default_factory=now)

    def effective_state(self) -> tuple[str, str]:
        """(state, reason) for scheduling and display: an admin's cordon/drain wins over a
        ready node; a node out for health reasons shows that reason (it is out either way)."""
        if self.admin_state and self.state == "ready":
            return self.admin_state, self.admin_reason
        return self.state, self.state_reason


class QuotaRow(SQLModel, table=True):
    """One quota figure: owner (department or project) x flavor (pool, gpu model) x resource.

    Invariant (validated by the admin service, issue 4): guaranteed <= nominal <= limit;
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


# --------------------------------------------------------------------------- jobs


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_submit", "status", "submit_time"),
        Index("ix_jobs_project_created", "project_id", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(default="", max_length=200)
    project_id: str = Field(foreign_key="projects.id", max_length=64)
    workload_class: str = Field(default="innovation", max_length=32)
    image: str = Field(default="", max_length=512)
    command: list = _json(default_factory=list)
    env: dict = _json()
    runtime: str = Field(default="container", max_length=16)
    gpus: int = 0  # per worker
    cpus: float = 1.0  # per worker
    memory_gb: float = 1.0  # per worker
    gpu_models: list = _json(default_factory=list)  # empty: any model
    pool: Optional[str] = Field(default=None, max_length=64)  # pin to one pool; None: by class
    workers: int = 1
    max_runtime_s: float = 3600.0
    priority: int = 0
    max_retries: int = 0
    checkpointable: bool = False  # saves state to BROKER_CHECKPOINT_DIR and resumes from it

    status: str = Field(default=JobStatus.PENDING.value, max_length=16)
    version: int = 1
    attempt: int = 1  # the current (or next) attempt number, from 1
    submit_time: float = Field(default_factory=now)  # original submit; kept across attempts
    created_at: float = Field(default_factory=now)
    admitted_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    cancel_requested_at: Optional[float] = None
    exit_code: Optional[int] = None
    message: str = ""  # last human-readable note (why it failed, who cancelled)

    # Pending reason, written by the scheduling loop each cycle while PENDING.
    pending_code: Optional[str] = Field(default=None, max_length=64)
    pending_message: str = ""
    pending_details: dict = _json()
    queue_position: Optional[int] = None
    estimated_start: Optional[float] = None

    # Admission (the current attempt's flavor).
    borrowing: bool = False
    flavor_pool: Optional[str] = Field(default=None, max_length=64)
    flavor_gpu_model: Optional[str] = Field(default=None, max_length=128)

    owner_token_id: Optional[str] = Field(default=None, max_length=32)


class Attempt(SQLModel, table=True):
    """One try at running a job; created at admission, closed when its workers are gone."""

    __tablename__ = "attempts"

    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=32)
    number: int = Field(primary_key=True)
    status: str = Field(default=JobStatus.ADMITTED.value, max_length=16)
    admitted_at: Optional[float] = None
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    exit_code: Optional[int] = None
    reason: str = ""


class Placement(SQLModel, table=True):
    """Worker -> node and GPU indices, per attempt."""

    __tablename__ = "placements"

    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=32)
    attempt: int = Field(primary_key=True)
    rank: int = Field(primary_key=True)
    node_id: str = Field(max_length=200, index=True)
    gpu_indices: list = _json(default_factory=list)
    cuda_visible_devices: str = ""


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_ts", "job_id", "id"),
        # the audit outbox: job submits not yet sealed into the audit chain (a small index)
        Index("ix_job_events_unsealed", "id", postgresql_where=text("kind = 'submitted' AND NOT sealed"),
              sqlite_where=text("kind = 'submitted' AND NOT sealed")),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", max_length=32)
    ts: float = Field(default_factory=now)
    kind: str = Field(max_length=32)  # "transition" | "submitted" | "cancel_requested" | ...
    from_status: Optional[str] = Field(default=None, max_length=16)
    to_status: Optional[str] = Field(default=None, max_length=16)
    attempt: Optional[int] = None
    message: str = ""
    details: dict = _json()
    sealed: bool = Field(default=False, sa_column_kwargs={"server_default": false()})  # in the audit chain


class Ledger(SQLModel, table=True):
    """Accounting per attempt: allocated GPU-seconds (and, once telemetry lands, used GPU-seconds
    and energy). Budgets and reports read this table."""

    __tablename__ = "ledger"

    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=32)
    attempt: int = Field(primary_key=True)
    project_id: str = Field(max_length=64, index=True)
    department_id: str = Field(max_length=64, index=True)
    pool: str = Field(default="", max_length=64)
    gpu_model: str = Field(default="", max_length=128)
    gpus: int = 0  # total over the gang
    started_at: float = 0.0
    ended_at: Optional[float] = None  # None while running
    allocated_gpu_s: float = 0.0  # gpus x (ended_at - started_at), set when the attempt ends
    used_gpu_s: Optional[float] = None
    energy_j: Optional[float] = None


# --------------------------------------------------------------------------- API access


class ApiToken(SQLModel, table=True):
    """A bearer token, stored as sha256 of the full secret (the secret is shown once)."""

    __tablename__ = "api_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    prefix: str = Field(max_length=32, index=True)  # visible part, e.g. "cb_3f9a1c2e"
    hash: str = Field(max_length=64, unique=True)
    kind: str = Field(default="user", max_length=16)  # "user" | "agent"
    name: str = Field(default="", max_length=200)
    role: str = Field(default="member", max_length=32)  # platform-admin, project-admin, ...
    project_id: Optional[str] = Field(default=None, max_length=64)  # scope for project roles
    department_id: Optional[str] = Field(default=None, max_length=64)
    node_id: Optional[str] = Field(default=None, max_length=200)  # agent tokens: own node only
    expires_at: Optional[float] = None
    revoked_at: Optional[float] = None
    created_at: float = Field(default_factory=now)


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("token_id", "key", name="uq_idem_token_key"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    token_id: str = Field(max_length=32)
    key: str = Field(max_length=255)
    body_hash: str = Field(max_length=64)
    job_id: str = Field(max_length=32)
    created_at: float = Field(default_factory=now, index=True)


ALL_TABLES = [
    Department, Project, Pool, Node, QuotaRow, Job, Attempt, Placement, JobEvent, Ledger,
    ApiToken, IdempotencyKey,
]
