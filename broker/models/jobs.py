"""Job tables: jobs, attempts, placements, events, the accounting ledger, idempotency keys.

`Job.version` is bumped by every state change (`broker.jobstate.transition`), which makes
compare-and-set updates possible: two schedulers or a restart can never double-admit.
"""

from __future__ import annotations

import enum
from typing import Optional

from sqlalchemy import Index, UniqueConstraint, false, text, true
from sqlmodel import Field, SQLModel

from broker.models.base import json_field, new_id, now


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


# --------------------------------------------------------------------------- jobs


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_submit", "status", "submit_time"),
        Index("ix_jobs_project_created", "project_id", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
        # the pending cap counts a project's queue on every submit (only PENDING rows indexed)
        Index("ix_jobs_pending_project", "project_id", postgresql_where=text("status = 'PENDING'"),
              sqlite_where=text("status = 'PENDING'")),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(default="", max_length=200)
    project_id: str = Field(foreign_key="projects.id", max_length=64)
    workload_class: str = Field(default="innovation", max_length=32)
    image: str = Field(default="", max_length=512)
    command: list = json_field(default_factory=list)
    env: dict = json_field()
    runtime: str = Field(default="container", max_length=16)
    gpus: int = 0  # per worker
    cpus: float = 1.0  # per worker
    memory_gb: float = 1.0  # per worker
    gpu_models: list = json_field(default_factory=list)  # empty: any model
    pool: Optional[str] = Field(default=None, max_length=64)  # pin to one pool; None: by class
    workers: int = 1
    max_runtime_s: float = 3600.0
    priority: int = 0
    max_retries: int = 0
    checkpointable: bool = False  # saves state to BROKER_CHECKPOINT_DIR and resumes from it
    # names of project secrets delivered as files at /run/secrets/NAME (never their values)
    secrets: list = json_field(default_factory=list)
    # datasets mounted into the job: [{"dataset", "path", "mode"}] (checked against grants at submit)
    mounts: list = json_field(default_factory=list)

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
    pending_details: dict = json_field()
    queue_position: Optional[int] = None
    estimated_start: Optional[float] = None

    # Admission (the current attempt's flavor).
    borrowing: bool = False
    flavor_pool: Optional[str] = Field(default=None, max_length=64)
    flavor_gpu_model: Optional[str] = Field(default=None, max_length=128)

    owner_token_id: Optional[str] = Field(default=None, max_length=32)

    # A service's replica (`broker.models.services`): the service, its replica index, the
    # revision it runs and the port the broker reaches it on (None for a batch job).
    service_id: Optional[str] = Field(default=None, max_length=32, index=True)
    replica_index: Optional[int] = None
    service_revision: Optional[int] = None
    port: Optional[int] = None
    # False: never a preemption victim (an operation service's first `min` replicas)
    preemptible: bool = Field(default=True, sa_column_kwargs={"server_default": true()})


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
    # the last time a worker was seen running (the loop's observation, written at most every
    # LAST_SEEN_EVERY_S): a LOST attempt is charged up to here, not for a broker's downtime
    last_seen_at: Optional[float] = None


class Placement(SQLModel, table=True):
    """Worker -> node and GPU indices, per attempt."""

    __tablename__ = "placements"

    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=32)
    attempt: int = Field(primary_key=True)
    rank: int = Field(primary_key=True)
    node_id: str = Field(max_length=200, index=True)
    gpu_indices: list = json_field(default_factory=list)
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
    details: dict = json_field()
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
    # gpus x (ended_at - started_at) once the attempt ended; while it runs, gpus x (accrued_to -
    # started_at): the periodic accrual (`broker.services.accounting.accrue_ledger`) moves
    # accrued_to to each whole accrual period boundary the attempt has run past
    allocated_gpu_s: float = 0.0
    accrued_to: Optional[float] = None
    used_gpu_s: Optional[float] = None
    energy_j: Optional[float] = None


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("token_id", "key", name="uq_idem_token_key"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    token_id: str = Field(max_length=32)
    key: str = Field(max_length=255)
    body_hash: str = Field(max_length=64)
    job_id: str = Field(max_length=32)
    created_at: float = Field(default_factory=now, index=True)
